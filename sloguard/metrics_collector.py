"""Per-request records to trial metrics, and the TrialResult every backend returns.

Also the server side of a real trial: vLLM's ``/metrics`` (parsed with prometheus_client's
parser) sampled during load, and the facts its startup log states.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from sloguard import slo_contract
from sloguard.crash_classifier import CrashInfo
from sloguard.early_abort import truncate
from sloguard.request_class import RequestClasses
from sloguard.result import RequestRecord, TrialResult
from sloguard.slo_contract import PERCENTILES, SloContract, request_latencies

LATENCY_NAMES: tuple[str, ...] = ("ttft", "tpot", "itl", "e2el")


def latency_table(records: Sequence[RequestRecord]) -> np.ndarray:
    """TTFT, TPOT and E2EL (ms) of every record, one row each; NaN for failed ones."""
    table = np.full((len(records), 3), np.nan)
    for row, record in zip(table, records, strict=True):
        if record.success:
            row[:] = request_latencies(record)
    return table


def good_requests(
    records: Sequence[RequestRecord],
    slo: SloContract,
    classes: RequestClasses | None = None,
    latencies: np.ndarray | None = None,
) -> np.ndarray:
    """Which records met their SLOs (failed ones never do).

    Without classes a request is good when it meets ``slo`` (vllm bench serve's rule); with
    them, when it meets its class's deadlines and so did every other round of its session.
    ``latencies`` is the records' :func:`latency_table`, when the caller has it already.
    """
    if classes is None:
        lat = latency_table(records) if latencies is None else latencies
        return np.array(
            [r.success and slo.request_is_good(*row) for r, row in zip(records, lat, strict=True)],
            bool,
        )
    meets = classes.meets_slo
    ok = np.array(
        [r.success and meets(r.request_id, r.send_time, r.token_times) for r in records], bool
    )
    sessions = classes.sessions[[r.request_id for r in records]]
    session_ok = np.ones(int(sessions.max(initial=-1)) + 1, bool)
    np.logical_and.at(session_ok, sessions, ok)
    return session_ok[sessions]


def summarize(
    records: Sequence[RequestRecord],
    duration_s: float,
    slo: SloContract,
    classes: RequestClasses | None = None,
) -> dict[str, float]:
    """Percentiles, means, throughput, goodput and attainment of one load phase.

    With request classes, attainment and request goodput count sessions (a multi-round request
    once), and each class adds ``class/<name>/...`` figures: attainment, goodput, sessions,
    TTFT and TPOT percentiles.

    Args:
        records: Every request sent, failed ones included.
        duration_s: Benchmark duration (first send to last completion).
        slo: The contract that decides which requests are good.
        classes: Per-request SLO classes of a multi-SLO workload.
    """
    success = np.array([r.success for r in records], bool)
    done = [r for r in records if r.success]
    table = latency_table(records)
    lat = table[success]
    itls = np.concatenate([np.diff(r.token_times) for r in done]) * 1e3 if done else np.empty(0)
    series = {
        "ttft": lat[:, 0],
        "tpot": lat[:, 1],
        "e2el": lat[:, 2],
        "itl": itls if itls.size or not done else np.zeros(1),
    }
    pcts = (*PERCENTILES, slo.percentile) if slo.percentile not in PERCENTILES else PERCENTILES
    metrics: dict[str, float] = {}
    for name in LATENCY_NAMES:
        values = series[name]
        metrics[f"{name}_mean_ms"] = float(values.mean()) if values.size else float("nan")
        for p, v in slo_contract.percentiles(values, pcts).items():
            metrics[f"{name}_p{p:g}_ms"] = v
    good = good_requests(records, slo, classes, table)
    out_tokens = sum(r.output_len for r in done)
    metrics.update(
        num_requests=float(len(records)),
        completed=float(len(done)),
        failed=float(len(records) - len(done)),
        duration_s=float(duration_s),
        output_throughput_tok_s=out_tokens / duration_s if duration_s > 0 else 0.0,
        request_throughput_rps=len(done) / duration_s if duration_s > 0 else 0.0,
    )
    if classes is None:
        metrics.update(_goodput(records, good, np.ones(len(records), bool), duration_s))
        return metrics
    ids = np.array([r.request_id for r in records], dtype=np.int64)
    first = classes.sessions[ids] == ids
    metrics.update(_goodput(records, good, first, duration_s))
    class_of = classes.class_ids[ids]
    for k, name in enumerate(classes.names):
        mine = class_of == k
        figures = _goodput(records, good & mine, first & mine, duration_s)
        figures["sessions"] = float(np.sum(first & mine))
        lat_k = table[mine & success]
        for label, column in (("ttft", 0), ("tpot", 1)):
            for p, v in slo_contract.percentiles(lat_k[:, column], (50, 99)).items():
                figures[f"{label}_p{p:g}_ms"] = v
        metrics.update({f"class/{name}/{key}": v for key, v in figures.items()})
    return metrics


_GOODPUT = ("goodput_tok_s", "request_goodput_rps")


def _goodput(
    records: Sequence[RequestRecord], good: np.ndarray, counted: np.ndarray, duration_s: float
) -> dict[str, float]:
    """Goodput (tokens of good records), and good and all ``counted`` ones (sessions)."""
    tokens = sum(r.output_len for r, g in zip(records, good, strict=True) if g)
    num_good = int(np.sum(good & counted))
    return {
        "goodput_tok_s": slo_contract.goodput(tokens, duration_s),
        "request_goodput_rps": slo_contract.goodput(num_good, duration_s),
        "attainment": slo_contract.attainment(num_good, int(np.sum(counted))),
    }


def build_result(
    config: dict[str, Any],
    slo: SloContract,
    records: Sequence[RequestRecord] = (),
    duration_s: float = 0.0,
    crash: CrashInfo | None = None,
    server: dict[str, float] | None = None,
    classes: RequestClasses | None = None,
    aborted: str | None = None,
) -> TrialResult:
    """Assemble a TrialResult: metrics from the records, then feasibility and utility.

    ``aborted`` is why the window was stopped early; ``records`` are then those finished by then
    (the verdict, infeasible, is certain whatever the rest would have done). An infeasible
    trial's utility is its SLO violation at the moment the miss became certain (where an early
    abort stops), so it is the same whether the window was cut there or ran on.

    A crash makes the trial infeasible with no utility and no goodput, whatever requests
    completed before it (their latencies stay). With request classes, a trial is feasible when
    its attainment reaches the target.
    """
    metrics = summarize(records, duration_s, slo, classes) if records else {}
    if crash is not None:
        metrics = {
            k: v for k, v in metrics.items() if not k.rsplit("/", 1)[-1].startswith(_GOODPUT)
        }
    result = TrialResult(
        config=dict(config),
        metrics=metrics,
        crash=crash,
        server=dict(server or {}),
        requests=list(records),
        aborted_early=aborted,
    )
    if crash is None and metrics:
        result.feasible, result.utility = _verdict(metrics, slo, classes)
        if aborted is not None:
            result.feasible = False
        elif not result.feasible and (cut := truncate(records, slo, classes)) is not None:
            kept, at, _ = cut
            start = min(r.send_time for r in records if r.send_time >= 0)
            _, result.utility = _verdict(summarize(kept, at - start, slo, classes), slo, classes)
    return result


def _verdict(
    metrics: dict[str, float], slo: SloContract, classes: RequestClasses | None
) -> tuple[bool, float]:
    """Feasibility and utility from a window's figures (attainment decides with classes)."""
    if classes is not None:
        share = metrics["attainment"]
        utility = slo_contract.attainment_utility(
            metrics["goodput_tok_s"], share, slo.attainment_target
        )
        return share >= slo.attainment_target - 1e-12, utility
    ttft = metrics[f"ttft_p{slo.percentile:g}_ms"]
    itl = metrics[f"itl_p{slo.percentile:g}_ms"]
    failed = metrics["failed"] / metrics["num_requests"]
    feasible = slo_contract.is_feasible(ttft, itl, failed, slo)
    return feasible, slo_contract.utility(metrics["goodput_tok_s"], ttft, itl, failed, slo)


def requests_table(
    records: Sequence[RequestRecord], slo: SloContract, classes: RequestClasses | None = None
) -> list[dict[str, Any]]:
    """One row per request: lengths, latencies, whether it met the SLO, and any error.

    With request classes, rows also name the class and session (``good`` is the session's).
    """
    rows = []
    table = latency_table(records)
    good = good_requests(records, slo, classes, table)
    for r, is_good, (ttft, tpot, e2el) in zip(records, good, table, strict=True):
        row: dict[str, Any] = {
            "request_id": r.request_id,
            "prompt_len": r.prompt_len,
            "target_output_len": r.target_output_len,
            "output_len": r.output_len,
            "scheduled_time_s": round(r.scheduled_time, 6),
            "send_time_s": round(r.send_time, 6),
            "ttft_ms": None,
            "tpot_ms": None,
            "e2el_ms": None,
            "max_itl_ms": None,
            "good": bool(is_good),
            "error": r.error,
        }
        if classes is not None:
            row["class"] = classes.names[int(classes.class_ids[r.request_id])]
            row["session"] = int(classes.sessions[r.request_id])
        if r.success:
            gaps = np.diff(r.token_times)
            row.update(
                ttft_ms=round(float(ttft), 3),
                tpot_ms=round(float(tpot), 3),
                e2el_ms=round(float(e2el), 3),
                max_itl_ms=round(float(gaps.max()) * 1e3, 3) if gaps.size else 0.0,
            )
        rows.append(row)
    return rows


# vLLM v1 engine metric sample names (counters carry the _total suffix)
KV_USAGE = "vllm:kv_cache_usage_perc"
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
PREEMPTIONS = "vllm:num_preemptions_total"
PREFIX_QUERIES = "vllm:prefix_cache_queries_total"
PREFIX_HITS = "vllm:prefix_cache_hits_total"
PROMPT_TOKENS = "vllm:prompt_tokens_total"
GENERATION_TOKENS = "vllm:generation_tokens_total"
# speculative decoding (a server launched with --speculative-config only)
SPEC_DRAFT_TOKENS = "vllm:spec_decode_num_draft_tokens_total"
SPEC_ACCEPTED_TOKENS = "vllm:spec_decode_num_accepted_tokens_total"
_GAUGES = (KV_USAGE, RUNNING, WAITING)
_COUNTERS = (
    PREEMPTIONS,
    PREFIX_QUERIES,
    PREFIX_HITS,
    PROMPT_TOKENS,
    GENERATION_TOKENS,
    SPEC_DRAFT_TOKENS,
    SPEC_ACCEPTED_TOKENS,
)

_STARTUP_PATTERNS: dict[str, re.Pattern[str]] = {
    "kv_cache_tokens": re.compile(r"KV cache size: ([\d,]+) tokens"),
    "max_concurrency": re.compile(
        r"Maximum concurrency for [\d,]+ tokens per request: ([\d.,]+)x"
    ),
    "init_engine_s": re.compile(
        r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+)"
    ),
}


def parse_metrics(text: str) -> dict[str, float]:
    """vLLM's Prometheus text as ``{sample name: value}`` over label sets (a data-parallel
    server's engines): counts summed, KV usage the fullest engine's."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, value = sample.name, float(sample.value)
            if name == KV_USAGE:
                values[name] = max(values.get(name, 0.0), value)
            elif name in _GAUGES or name in _COUNTERS:
                values[name] = values.get(name, 0.0) + value
    return values


def parse_startup_log(text: str) -> dict[str, float]:
    """KV cache tokens, maximum concurrency and engine init seconds, as the log states them."""
    facts: dict[str, float] = {}
    for key, pattern in _STARTUP_PATTERNS.items():
        matches = pattern.findall(text)
        if matches:
            facts[key] = float(matches[-1].replace(",", ""))
    return facts


@dataclass
class ServerMetrics:
    """Scrapes of ``/metrics`` over one load phase: counter deltas, gauge peaks and means."""

    before: dict[str, float] = field(default_factory=dict)
    samples: list[dict[str, float]] = field(default_factory=list)
    after: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        """Figures for the trial: preemptions, prefix-cache hit rate, speculation's acceptance,
        KV and queue peaks."""
        out: dict[str, float] = {}
        if self.before and self.after:

            def delta(name: str) -> float:
                return self.after.get(name, 0.0) - self.before.get(name, 0.0)

            out["num_preemptions"] = delta(PREEMPTIONS)
            out["server_prompt_tokens"] = delta(PROMPT_TOKENS)
            out["server_generation_tokens"] = delta(GENERATION_TOKENS)
            queries = delta(PREFIX_QUERIES)
            out["prefix_cache_hit_rate"] = delta(PREFIX_HITS) / queries if queries > 0 else 0.0
            if SPEC_DRAFT_TOKENS in self.after:  # the share of drafted tokens accepted
                drafted = delta(SPEC_DRAFT_TOKENS)
                out["spec_draft_tokens"] = drafted
                out["spec_acceptance_rate"] = (
                    delta(SPEC_ACCEPTED_TOKENS) / drafted if drafted > 0 else 0.0
                )
        scrapes = [*self.samples, self.after] if self.after else self.samples
        if scrapes:
            for name, key in ((KV_USAGE, "peak_kv_usage"), (RUNNING, "max_running")):
                out[key] = max(s.get(name, 0.0) for s in scrapes)
            waiting = [s.get(WAITING, 0.0) for s in scrapes]
            out["max_waiting"] = max(waiting)
            out["mean_waiting"] = float(np.mean(waiting))
            out["metrics_scrapes"] = float(len(scrapes))
        return out
