"""Workloads: request lengths and arrival processes, seeded so every trial serves the same.

The same :class:`Workload` drives the simulator and the real load generator, so a configuration
is judged on identical requests by both backends. Arrivals are a closed loop, Poisson or gamma
draws, or a replayed trace (a CSV of arrival times and prompt/output lengths).

A multi-SLO workload (``classes`` in its config) assigns every request a class with its own
TTFT and TPOT limits (:class:`~sloguard.request_class.RequestClasses`). A reasoning class
decodes thinking then answer tokens under different TPOT limits; a tool-calling class sends
several rounds, each a request of its own whose prompt extends the previous round's.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sloguard.request_class import RequestClasses

if TYPE_CHECKING:
    import pandas as pd
    from omegaconf import DictConfig

ZeroLoadTtft = Callable[[np.ndarray], np.ndarray]  # prompt lengths -> zero-load TTFT (ms)

ARRIVALS: tuple[str, ...] = ("closed", "poisson", "gamma", "trace")
# accepted trace columns: (arrival seconds or timestamps, prompt tokens, output tokens)
TRACE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("arrived_at", "num_prefill_tokens", "num_decode_tokens"),  # Vidur's processed traces
    ("TIMESTAMP", "ContextTokens", "GeneratedTokens"),  # the original Azure 2023 traces
)
LENGTH_DISTS: tuple[str, ...] = ("fixed", "uniform", "lognormal")


@dataclass(frozen=True)
class Workload:
    """A fixed request sequence.

    Args:
        prompt_lens: Prompt tokens per request.
        output_lens: Output tokens per request (sent as ``max_tokens`` with ``ignore_eos``).
        arrival_times: When each request is due, seconds from the start (all 0 for a closed
            loop). A request is sent at its due time or, with a cap, when a slot frees.
        concurrency: In-flight cap (a closed loop is all-due-at-0 with a cap); 0 is uncapped.
        prefix_groups: Shared-prefix group per request (-1 for none).
        shared_prefix_len: Tokens of the prefix shared inside a group.
        follows: For a later round of a multi-round request, the index of the round it follows
            (-1 for first rounds). Later rounds come after every first round, each after the
            round it follows; their ``arrival_times`` are the delay after that round ends. A
            session holds its concurrency slot until its last round ends.
        classes: Per-request SLO classes of a multi-SLO workload (``None``: the trial's
            single SLO contract judges every request).
        seed: The workload's seed; a real server is sent prompt token ids drawn from it.
        stop_lost_after_s: Stop the load once the attainment target is certainly missed and
            at least this many seconds have passed since the first send (a capacity probe
            whose exact attainment no longer matters); ``None``: the load runs to its end.
    """

    prompt_lens: np.ndarray
    output_lens: np.ndarray
    arrival_times: np.ndarray
    concurrency: int
    prefix_groups: np.ndarray
    shared_prefix_len: int = 0
    follows: np.ndarray | None = None
    classes: RequestClasses | None = None
    seed: int = 0
    stop_lost_after_s: float | None = None

    def __len__(self) -> int:
        return len(self.prompt_lens)

    @property
    def num_first(self) -> int:
        """Requests sent on their own arrival (the first rounds; all of them without rounds)."""
        return len(self) if self.follows is None else int(np.sum(self.follows < 0))

    def next_rounds(self) -> np.ndarray:
        """Index of the round that follows each request (-1 for a session's last round)."""
        nxt = np.full(len(self), -1)
        if self.follows is not None:
            later = np.flatnonzero(self.follows >= 0)
            nxt[self.follows[later]] = later
        return nxt

    def priorities(self) -> list[int]:
        """Each request's priority under vLLM's ``priority`` scheduling policy (lower is served
        first): its class's rank by the median TTFT limit of the class's requests, then by
        their median TPOT limit (before the answer), the tightest 0; all 0 without classes.

        Medians make classes comparable whether a class sets its TTFT in milliseconds or as a
        slowdown over each prompt's zero-load TTFT.
        """
        classes = self.classes
        if classes is None:
            return [0] * len(self)
        ids = np.unique(classes.class_ids)
        keys = [
            (
                float(np.median(classes.ttft_ms[classes.class_ids == c])),
                float(np.median(classes.tpot_ms[classes.class_ids == c])),
            )
            for c in ids
        ]
        rank = {int(c): sorted(set(keys)).index(key) for c, key in zip(ids, keys, strict=True)}
        return [rank[int(c)] for c in classes.class_ids]

    def offered_rate(self) -> float:
        """Sessions per second the arrivals offer (first to last arrival); 0 for one or none."""
        first = self.arrival_times[: self.num_first]
        span = float(first[-1] - first[0]) if len(first) > 1 else 0.0
        return (len(first) - 1) / span if span > 0 else 0.0

    def at_rate(self, rate: float) -> Workload:
        """The same requests with first-round arrivals rescaled to ``rate`` sessions per second.

        The gaps keep their shape (burstiness, a trace's pattern); tool latencies are unchanged.
        """
        offered = self.offered_rate()
        if offered <= 0 or rate <= 0:
            raise ValueError(f"cannot rescale arrivals offered at {offered:g} req/s to {rate:g}")
        arrivals = self.arrival_times.copy()
        m = self.num_first
        arrivals[:m] = (arrivals[:m] - arrivals[0]) * (offered / rate) + arrivals[0]
        return dataclasses.replace(self, arrival_times=arrivals)

    @classmethod
    def plain(
        cls,
        prompt_lens: int | np.ndarray,
        output_lens: int | np.ndarray,
        arrival_times: np.ndarray,
        concurrency: int,
    ) -> Workload:
        """Requests without shared prefixes, one per arrival; a length may be one int for all."""
        n = len(arrival_times)
        return cls(
            prompt_lens=np.broadcast_to(prompt_lens, n).astype(np.int64),
            output_lens=np.broadcast_to(output_lens, n).astype(np.int64),
            arrival_times=np.asarray(arrival_times, dtype=float),
            concurrency=concurrency,
            prefix_groups=np.full(n, -1),
        )


def rounds_after(next_round: Sequence[int], rid: int) -> list[int]:
    """The later rounds of request ``rid``'s session, in order (``next_round`` as from
    :meth:`Workload.next_rounds`)."""
    out = []
    while (rid := next_round[rid]) >= 0:
        out.append(rid)
    return out


def sample_lengths(cfg: DictConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` token lengths from a ``LengthConfig`` and clip them to ``[low, high]``."""
    if cfg.dist == "fixed":
        values = np.full(n, cfg.mean)
    elif cfg.dist == "uniform":
        values = rng.uniform(cfg.low, cfg.high, n)
    elif cfg.dist == "lognormal":
        median = cfg.median if cfg.median is not None else cfg.mean / 1.25
        sigma = math.sqrt(2.0 * math.log(max(cfg.mean / median, 1.0 + 1e-9)))
        values = rng.lognormal(math.log(median), sigma, n)
    else:
        raise ValueError(f"length dist {cfg.dist!r} is not one of {', '.join(LENGTH_DISTS)}")
    return np.clip(np.rint(values), cfg.low, cfg.high).astype(np.int64)


def arrival_times(
    kind: str,
    n: int,
    rate: float,
    burstiness: float,
    rng: np.random.Generator,
    ramp_up: tuple[int, float] = (0, 0.0),
) -> np.ndarray:
    """Due times as vllm bench serve draws them; zero for a closed loop.

    Gaps are gamma(shape=burstiness, scale=1/(rate*burstiness)): burstiness 1 is Poisson, lower
    is burstier at the same mean rate. A closed loop may ramp up: its first ``ramp_up[0]``
    requests are spread evenly over ``ramp_up[1]`` seconds instead of all starting at once.
    """
    if kind == "closed":
        due = np.zeros(n)
        count, seconds = ramp_up
        if count > 1 and seconds > 0:
            head = min(count, n)
            due[:head] = np.arange(head) * (seconds / head)
            due[head:] = due[head - 1]
        return due
    shape = 1.0 if kind == "poisson" else burstiness
    gaps = rng.gamma(shape, 1.0 / (rate * shape), n)
    gaps[0] = 0.0
    return np.cumsum(gaps)


def trace_columns(path: str | Path) -> tuple[str, str, str]:
    """The (time, prompt, output) columns of a trace CSV.

    Raises:
        ValueError: The file has none of the :data:`TRACE_COLUMNS` sets (message names them).
    """
    import pandas as pd  # traces only: a command line without one starts faster

    header = set(pd.read_csv(path, nrows=0).columns)
    for columns in TRACE_COLUMNS:
        if set(columns) <= header:
            return columns
    allowed = " or ".join("(" + ", ".join(c) + ")" for c in TRACE_COLUMNS)
    raise ValueError(f"has columns {sorted(header)}; a trace needs {allowed}")


def read_trace(
    path: str | Path, start_s: float = 0.0, time_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arrival seconds (from the first request at or after ``start_s``), prompt and output tokens.

    Timestamps may be seconds or date-times. ``time_scale`` multiplies the gaps: 0.5 replays the
    trace at twice its rate.
    """
    import pandas as pd

    time_col, prompt_col, output_col = trace_columns(path)
    frame = pd.read_csv(path, usecols=[time_col, prompt_col, output_col])
    times = frame[time_col]
    if not pd.api.types.is_numeric_dtype(times):
        stamps = pd.to_datetime(times, format="mixed", errors="coerce")
        times = (stamps - stamps.min()).dt.total_seconds()
    t = _checked_column(times, time_col, integer=False)
    back = np.flatnonzero(np.diff(t) < 0)
    if len(back):
        raise ValueError(
            f"row {back[0] + 2}: {time_col} goes back in time; a trace lists its requests in "
            "arrival order"
        )
    prompts = _checked_column(frame[prompt_col], prompt_col, integer=True)
    outputs = _checked_column(frame[output_col], output_col, integer=True)
    keep = t >= t[0] + start_s if len(t) else np.zeros(0, dtype=bool)
    arrivals = (t[keep] - t[keep][0]) * time_scale if keep.any() else np.zeros(0)
    return arrivals, prompts[keep].astype(np.int64), outputs[keep].astype(np.int64)


def _checked_column(column: pd.Series, name: str, *, integer: bool) -> np.ndarray:
    """A trace column as floats; its first bad row named (not a number, negative, fractional)."""
    import pandas as pd

    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(values) | (values < 0)
        if integer:
            bad |= values != np.floor(values)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        what = "a whole number >= 0" if integer else "a time"
        value = column.iloc[row]
        shown = repr(value) if isinstance(value, str) else str(value)
        raise ValueError(f"row {row + 1}: {name}={shown} is not {what}")
    return values


def build_workload(cfg: DictConfig, zero_load_ttft_ms: ZeroLoadTtft | None = None) -> Workload:
    """Materialise a ``WorkloadConfig`` into its request sequence (deterministic in its seed).

    A trace gives arrivals and lengths (the first ``num_requests`` from ``trace_start_s``,
    lengths clipped to the length configs' ``[low, high]``); otherwise they are drawn. Request
    classes then assign each request its class (lengths a class sets are redrawn for its
    requests) and expand multi-round ones.

    Args:
        cfg: The workload config.
        zero_load_ttft_ms: Zero-load TTFT per prompt length, for classes whose TTFT limit is a
            slowdown (needed only then).
    """
    rng = np.random.default_rng(cfg.seed)
    n = int(cfg.num_requests)
    if cfg.arrival == "trace":
        arrivals, prompts, outputs = read_trace(
            cfg.trace_path, cfg.trace_start_s, cfg.trace_time_scale
        )
        if len(arrivals) < n:
            raise ValueError(
                f"workload.num_requests={n} but the trace has {len(arrivals)} requests from "
                f"trace_start_s={cfg.trace_start_s:g}"
            )
        arrivals = arrivals[:n]
        prompts = np.clip(prompts[:n], cfg.prompt_len.low, cfg.prompt_len.high)
        outputs = np.clip(outputs[:n], cfg.output_len.low, cfg.output_len.high)
    else:
        prompts = sample_lengths(cfg.prompt_len, n, rng)
        outputs = sample_lengths(cfg.output_len, n, rng)
        arrivals = arrival_times(
            cfg.arrival,
            n,
            cfg.request_rate,
            cfg.burstiness,
            rng,
            ramp_up=(int(cfg.concurrency), float(cfg.ramp_up_s)),
        )
    groups = (
        rng.integers(0, cfg.num_prefix_groups, n) if cfg.num_prefix_groups > 0 else np.full(n, -1)
    )
    prefix = int(cfg.shared_prefix_len) if cfg.num_prefix_groups > 0 else 0
    if prefix:
        prompts = np.maximum(prompts, prefix + 1)
    workload = Workload(
        prompts,
        outputs,
        arrivals,
        max(int(cfg.concurrency), 0),
        groups,
        prefix,
        seed=int(cfg.seed),
    )
    if cfg.classes:
        workload = with_classes(workload, cfg, rng, zero_load_ttft_ms)
    return workload


@dataclass
class _Rounds:
    """Per-round columns of a multi-SLO workload while it is assembled."""

    prompt: list[int] = dataclasses.field(default_factory=list)
    output: list[int] = dataclasses.field(default_factory=list)
    due: list[float] = dataclasses.field(default_factory=list)
    follows: list[int] = dataclasses.field(default_factory=list)
    class_id: list[int] = dataclasses.field(default_factory=list)
    session: list[int] = dataclasses.field(default_factory=list)
    ttft_slo: list[tuple[float | None, float | None]] = dataclasses.field(default_factory=list)
    tpot: list[float] = dataclasses.field(default_factory=list)
    answer_tpot: list[float] = dataclasses.field(default_factory=list)
    answer_from: list[int] = dataclasses.field(default_factory=list)


def with_classes(
    workload: Workload,
    cfg: DictConfig,
    rng: np.random.Generator,
    zero_load_ttft_ms: ZeroLoadTtft | None = None,
) -> Workload:
    """Assign each request a class (by the classes' weights) and expand multi-round ones.

    Args:
        workload: Single-round requests, one per session.
        cfg: The workload config; its ``classes`` are ``RequestClassConfig`` entries.
        rng: Draws the classes and any lengths the classes set.
        zero_load_ttft_ms: Resolves TTFT limits given as a slowdown.

    Raises:
        ValueError: A class gives its TTFT limit as a slowdown and no resolver was given.
    """
    classes = list(cfg.classes)
    n = len(workload)
    weights = np.array([float(c.weight) for c in classes])
    class_of = rng.choice(len(classes), n, p=weights / weights.sum())
    prompts, outputs = workload.prompt_lens.copy(), workload.output_lens.copy()
    answers = np.zeros(n, dtype=np.int64)
    later: dict[int, list[tuple[int, int]]] = {}  # session -> (added prompt, output) per round
    for k, cls in enumerate(classes):
        members = np.flatnonzero(class_of == k)
        if cls.prompt_len is not None:
            prompts[members] = sample_lengths(cls.prompt_len, len(members), rng)
        if cls.output_len is not None:
            outputs[members] = sample_lengths(cls.output_len, len(members), rng)
        if cls.answer_len is not None:
            answers[members] = sample_lengths(cls.answer_len, len(members), rng)
        draws = []
        for r in range(1, int(cls.rounds)):
            lengths = cls.output_len or cfg.output_len
            if r == cls.rounds - 1 and cls.final_output_len is not None:
                lengths = cls.final_output_len
            added = sample_lengths(cls.round_prompt_len, len(members), rng)
            draws.append((added, sample_lengths(lengths, len(members), rng)))
        for j, session in enumerate(members.tolist()):
            later[session] = [(int(extra[j]), int(outs[j])) for extra, outs in draws]
    if workload.shared_prefix_len:
        prompts = np.maximum(prompts, workload.shared_prefix_len + 1)
    cols = _Rounds()
    pending: list[tuple[int, int, int, int, int]] = []  # (session, round, prompt, output, follows)
    for s in range(n):
        cls = classes[int(class_of[s])]
        prompt = int(prompts[s])
        out = int(outputs[s] + answers[s])
        _add_round(cols, cls, s, int(class_of[s]), prompt, out, int(outputs[s]), 0)
        cols.due.append(float(workload.arrival_times[s]))
        cols.follows.append(-1)
        parent = s
        for r, (more, output) in enumerate(later[s], start=1):
            prompt, out = prompt + out + more, output
            pending.append((s, r, prompt, out, parent))
            parent = n + len(pending) - 1  # later rounds are numbered after every first round
    for s, r, prompt, out, parent in pending:
        cls = classes[int(class_of[s])]
        _add_round(cols, cls, s, int(class_of[s]), prompt, out, out, r)
        cols.due.append(float(cls.tool_latency_s))
        cols.follows.append(parent)
    prompt_arr = np.array(cols.prompt, dtype=np.int64)
    ttft = np.array([np.nan if ms is None else ms for ms, _ in cols.ttft_slo], dtype=float)
    needs = np.isnan(ttft)
    if needs.any():
        if zero_load_ttft_ms is None:
            raise ValueError("a class sets ttft_slowdown but no zero-load TTFT model was given")
        slowdown = np.array([sd for (ms, sd) in cols.ttft_slo if ms is None], dtype=float)
        ttft[needs] = slowdown * zero_load_ttft_ms(prompt_arr[needs])
    sessions = np.array(cols.session)
    request_classes = RequestClasses(
        names=tuple(str(c.name) for c in classes),
        class_ids=np.array(cols.class_id),
        sessions=sessions,
        ttft_ms=ttft,
        tpot_ms=np.array(cols.tpot),
        answer_tpot_ms=np.array(cols.answer_tpot),
        answer_from=np.array(cols.answer_from, dtype=np.int64),
    )
    return dataclasses.replace(
        workload,
        prompt_lens=prompt_arr,
        output_lens=np.array(cols.output, dtype=np.int64),
        arrival_times=np.array(cols.due),
        prefix_groups=workload.prefix_groups[sessions],
        follows=np.array(cols.follows),
        classes=request_classes,
    )


def _add_round(
    cols: _Rounds,
    cls: DictConfig,
    session: int,
    class_id: int,
    prompt: int,
    output: int,
    answer_from: int,
    round_index: int,
) -> None:
    """Append one round's lengths and SLOs (the final round of a loop takes the final SLOs)."""
    final = cls.rounds > 1 and round_index == cls.rounds - 1
    if final and (cls.final_ttft_ms is not None or cls.final_ttft_slowdown is not None):
        cols.ttft_slo.append((cls.final_ttft_ms, cls.final_ttft_slowdown))
    else:
        cols.ttft_slo.append((cls.ttft_ms, cls.ttft_slowdown))
    tpot = float(cls.final_tpot_ms if final and cls.final_tpot_ms is not None else cls.tpot_ms)
    cols.prompt.append(int(prompt))
    cols.output.append(int(output))
    cols.class_id.append(class_id)
    cols.session.append(session)
    cols.tpot.append(tpot)
    cols.answer_tpot.append(float(cls.answer_tpot_ms) if cls.answer_tpot_ms else tpot)
    cols.answer_from.append(int(answer_from))
