"""SLO thresholds and the goodput, attainment and utility math (pure functions).

Definitions follow ``vllm bench serve`` so figures line up with the field's own tool:

- TTFT: first token time minus send time.
- TPOT: ``(e2e - ttft) / (output_len - 1)`` per request (0 for one-token outputs).
- ITL: gaps between consecutive tokens, pooled over all requests.
- A request is *good* when it succeeded and meets every given per-request SLO (TTFT, TPOT against
  the ITL threshold, E2EL when set); failed requests are never good.
- Goodput: output tokens of good requests per second of benchmark duration.

A multi-SLO workload judges each request by its own class's limits instead (see
:mod:`sloguard.request_class`); its trial is feasible when the share of good requests reaches
``attainment_target``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sloguard.result import RequestRecord

PERCENTILES: tuple[int, ...] = (50, 95, 99)


@dataclass(frozen=True)
class SloContract:
    """Latency SLOs in milliseconds.

    Example:
        >>> slo = SloContract(ttft_ms=500, itl_ms=100)
        >>> slo.request_is_good(ttft_ms=120.0, tpot_ms=30.0, e2el_ms=900.0)
        True

    Args:
        ttft_ms: Time-to-first-token limit (per request, and for the trial percentile).
        itl_ms: Inter-token limit (per request against TPOT; for the trial against pooled ITL).
        percentile: Which percentile of TTFT and ITL decides feasibility.
        e2el_ms: Optional end-to-end limit per request.
        attainment_target: Share of requests that must meet their SLOs (multi-SLO workloads
            and capacity search).
    """

    ttft_ms: float = 500.0
    itl_ms: float = 100.0
    percentile: float = 99.0
    e2el_ms: float | None = None
    attainment_target: float = 0.9

    def request_is_good(self, ttft_ms: float, tpot_ms: float, e2el_ms: float) -> bool:
        """Whether one successful request meets every per-request SLO."""
        ok = ttft_ms <= self.ttft_ms and tpot_ms <= self.itl_ms
        return ok and (self.e2el_ms is None or e2el_ms <= self.e2el_ms)


def request_latencies(record: RequestRecord) -> tuple[float, float, float]:
    """TTFT, TPOT and E2EL of one successful request, in milliseconds."""
    ttft = (record.token_times[0] - record.send_time) * 1e3
    e2el = (record.token_times[-1] - record.send_time) * 1e3
    return ttft, tpot_ms(ttft, e2el, record.output_len), e2el


def percentiles(
    values: Sequence[float] | np.ndarray, ps: Iterable[float] = PERCENTILES
) -> dict[float, float]:
    """Linear-interpolated percentiles (numpy's default, as vllm bench serve); NaN when empty."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return {p: float("nan") for p in ps}
    return {p: float(v) for p, v in zip(ps, np.percentile(arr, list(ps)), strict=True)}


def tpot_ms(ttft_ms: float, e2el_ms: float, output_len: int) -> float:
    """Time per output token after the first, as vllm bench serve defines it."""
    return (e2el_ms - ttft_ms) / (output_len - 1) if output_len > 1 else 0.0


def goodput(good_output_tokens: float, duration_s: float) -> float:
    """Output tokens per second of the requests that met their SLOs."""
    return good_output_tokens / duration_s if duration_s > 0 else 0.0


def attainment(num_good: int, num_requests: int) -> float:
    """Share of all requests (failed ones included) that met their SLOs."""
    return num_good / num_requests if num_requests else 0.0


def allowed_failure_fraction(slo: SloContract) -> float:
    """Failed requests a feasible trial may have: those beyond the SLO percentile (1% at p99)."""
    return 1.0 - slo.percentile / 100.0


def attainment_utility(goodput_tok_s: float, attainment_share: float, target: float) -> float:
    """Utility of a multi-SLO trial: goodput at or above the target, else minus the shortfall."""
    if attainment_share >= target - 1e-12:
        return float(goodput_tok_s)
    return -(target - attainment_share)


def is_feasible(
    ttft_pct_ms: float, itl_pct_ms: float, failed_fraction: float, slo: SloContract
) -> bool:
    """Feasible: TTFT and ITL percentiles within the SLO and no more failures than allowed.

    A failed request is as late as a request can be, so a trial whose failures exceed the share
    the percentile leaves (1% at p99) cannot meet the SLO at that percentile.
    """
    return bool(
        ttft_pct_ms <= slo.ttft_ms
        and itl_pct_ms <= slo.itl_ms
        and failed_fraction <= allowed_failure_fraction(slo) + 1e-12
    )


def slo_violation(
    ttft_pct_ms: float, itl_pct_ms: float, failed_fraction: float, slo: SloContract
) -> float:
    """Summed relative excess over the SLO (0 when feasible).

    Terms: TTFT and ITL percentiles over their thresholds, and the failed share of requests
    over the allowed share (relative to the whole, so 100% failures add 1).
    """
    excess = max(0.0, ttft_pct_ms / slo.ttft_ms - 1.0) + max(0.0, itl_pct_ms / slo.itl_ms - 1.0)
    return excess + max(0.0, failed_fraction - allowed_failure_fraction(slo))


def utility(
    goodput_tok_s: float,
    ttft_pct_ms: float,
    itl_pct_ms: float,
    failed_fraction: float,
    slo: SloContract,
) -> float:
    """The value optimizers maximise: goodput when feasible, else minus the SLO violation.

    Any feasible configuration therefore outranks any infeasible one, and among infeasible ones
    the closer to the SLO ranks higher, which gives a model-based optimizer a slope to climb.
    A trial in which no request completed scores -1000; a crash has no utility (``None`` in a
    :class:`~sloguard.result.TrialResult`).
    """
    if np.isnan(ttft_pct_ms) or np.isnan(itl_pct_ms):
        return -1e3
    if is_feasible(ttft_pct_ms, itl_pct_ms, failed_fraction, slo):
        return float(goodput_tok_s)
    return -slo_violation(ttft_pct_ms, itl_pct_ms, failed_fraction, slo)


def shortfalls(metrics: dict[str, float], slo: SloContract) -> list[tuple[str, float, float]]:
    """Each SLO a trial's figures missed: (what, measured, limit), the worst miss first.

    With request classes (``class/...`` figures) it is the attainment target; else the TTFT and
    ITL percentiles and the share of failed requests. Ranked by how far each is off its limit.
    """
    if any(key.startswith("class/") for key in metrics):
        share = metrics["attainment"]
        return (
            [("attainment", share, slo.attainment_target)] if share < slo.attainment_target else []
        )
    p = f"{slo.percentile:g}"
    checks = [
        (f"TTFT p{p} (ms)", metrics.get(f"ttft_p{p}_ms", math.inf), slo.ttft_ms),
        (f"ITL p{p} (ms)", metrics.get(f"itl_p{p}_ms", math.inf), slo.itl_ms),
    ]
    if metrics.get("num_requests"):
        failed = metrics.get("failed", 0.0) / metrics["num_requests"]
        checks.append(("failed share", failed, allowed_failure_fraction(slo)))
    missed = [(what, value, limit) for what, value, limit in checks if value > limit + 1e-12]
    return sorted(missed, key=lambda m: -(m[1] / m[2] if m[2] else math.inf))
