"""Workloads: request lengths and arrival processes, seeded so every trial serves the same.

The same :class:`Workload` drives the simulator and the real load generator, so a configuration
is judged on identical requests by both backends. Arrivals are a closed loop, Poisson or gamma
draws, or a replayed trace (a CSV of arrival times and prompt/output lengths).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from omegaconf import DictConfig

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
    """

    prompt_lens: np.ndarray
    output_lens: np.ndarray
    arrival_times: np.ndarray
    concurrency: int
    prefix_groups: np.ndarray
    shared_prefix_len: int = 0

    def __len__(self) -> int:
        return len(self.prompt_lens)

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
    time_col, prompt_col, output_col = trace_columns(path)
    frame = pd.read_csv(path, usecols=[time_col, prompt_col, output_col])
    times = frame[time_col]
    if not pd.api.types.is_numeric_dtype(times):
        stamps = pd.to_datetime(times, format="mixed")
        times = (stamps - stamps.min()).dt.total_seconds()
    frame = frame.assign(_t=times.astype(float)).sort_values("_t", kind="stable")
    frame = frame[frame["_t"] >= frame["_t"].min() + start_s]
    arrivals = (frame["_t"].to_numpy() - frame["_t"].min()) * time_scale if len(frame) else []
    return (
        np.asarray(arrivals, dtype=float),
        frame[prompt_col].to_numpy(dtype=np.int64),
        frame[output_col].to_numpy(dtype=np.int64),
    )


def build_workload(cfg: DictConfig) -> Workload:
    """Materialise a ``WorkloadConfig`` into its request sequence (deterministic in its seed).

    A trace gives arrivals and lengths (the first ``num_requests`` from ``trace_start_s``,
    lengths clipped to the length configs' ``[low, high]``); otherwise they are drawn.
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
    return Workload(prompts, outputs, arrivals, max(int(cfg.concurrency), 0), groups, prefix)
