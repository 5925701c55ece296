"""Per-request records to trial metrics, and the TrialResult every backend returns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sloguard import slo_contract
from sloguard.crash_classifier import CrashInfo
from sloguard.result import RequestRecord, TrialResult
from sloguard.slo_contract import PERCENTILES, SloContract

LATENCY_NAMES: tuple[str, ...] = ("ttft", "tpot", "itl", "e2el")


def request_latencies(record: RequestRecord) -> tuple[float, float, float]:
    """TTFT, TPOT and E2EL of one successful request, in milliseconds."""
    ttft = (record.token_times[0] - record.send_time) * 1e3
    e2el = (record.token_times[-1] - record.send_time) * 1e3
    return ttft, slo_contract.tpot_ms(ttft, e2el, record.output_len), e2el


def summarize(
    records: Sequence[RequestRecord], duration_s: float, slo: SloContract
) -> dict[str, float]:
    """Percentiles, means, throughput, goodput and attainment of one load phase.

    Args:
        records: Every request sent, failed ones included.
        duration_s: Benchmark duration (first send to last completion).
        slo: The contract that decides which requests are good.
    """
    done = [r for r in records if r.success]
    lat = np.array([request_latencies(r) for r in done]).reshape(-1, 3)
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
    good = [r for r, (t, tp, e) in zip(done, lat, strict=True) if slo.request_is_good(t, tp, e)]
    out_tokens = sum(r.output_len for r in done)
    metrics.update(
        num_requests=float(len(records)),
        completed=float(len(done)),
        failed=float(len(records) - len(done)),
        duration_s=float(duration_s),
        output_throughput_tok_s=out_tokens / duration_s if duration_s > 0 else 0.0,
        request_throughput_rps=len(done) / duration_s if duration_s > 0 else 0.0,
        goodput_tok_s=slo_contract.goodput(sum(r.output_len for r in good), duration_s),
        request_goodput_rps=slo_contract.goodput(len(good), duration_s),
        attainment=slo_contract.attainment(len(good), len(records)),
    )
    return metrics


def build_result(
    config: dict[str, Any],
    slo: SloContract,
    records: Sequence[RequestRecord] = (),
    duration_s: float = 0.0,
    crash: CrashInfo | None = None,
    server: dict[str, float] | None = None,
) -> TrialResult:
    """Assemble a TrialResult: metrics from the records, then feasibility and utility.

    A crash makes the trial infeasible with no utility, whatever requests completed before it.
    """
    metrics = summarize(records, duration_s, slo) if records else {}
    result = TrialResult(
        config=dict(config),
        metrics=metrics,
        crash=crash,
        server=dict(server or {}),
        requests=list(records),
    )
    if crash is None and metrics:
        ttft = metrics[f"ttft_p{slo.percentile:g}_ms"]
        itl = metrics[f"itl_p{slo.percentile:g}_ms"]
        failed = metrics["failed"] / metrics["num_requests"]
        result.feasible = slo_contract.is_feasible(ttft, itl, failed, slo)
        result.utility = slo_contract.utility(metrics["goodput_tok_s"], ttft, itl, failed, slo)
    return result


def requests_table(records: Sequence[RequestRecord], slo: SloContract) -> list[dict[str, Any]]:
    """One row per request: lengths, latencies, whether it met the SLO, and any error."""
    rows = []
    for r in records:
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
            "good": False,
            "error": r.error,
        }
        if r.success:
            ttft, tpot, e2el = request_latencies(r)
            gaps = np.diff(r.token_times)
            row.update(
                ttft_ms=round(ttft, 3),
                tpot_ms=round(tpot, 3),
                e2el_ms=round(e2el, 3),
                max_itl_ms=round(float(gaps.max()) * 1e3, 3) if gaps.size else 0.0,
                good=slo.request_is_good(ttft, tpot, e2el),
            )
        rows.append(row)
    return rows
