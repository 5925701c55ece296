"""Early abort: stop a measurement window once the SLO verdict can no longer change.

A window of ``N`` requests is certain to miss a percentile SLO once more than the share the
percentile leaves (1% at p99) of all ``N`` have already missed, whatever the rest do: their
failures, or completed requests whose TTFT or inter-token gaps are over the limit. With request
classes it is certain once more sessions have missed than the attainment target allows. Only
finished requests count (a request still streaming may yet make it), and the percentile rule
keeps a margin of one request for interpolation, so an aborted trial is always one that would
have been infeasible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from sloguard import slo_contract
from sloguard.result import ABORT_ERROR

if TYPE_CHECKING:
    from sloguard.request_class import RequestClasses
    from sloguard.result import RequestRecord
    from sloguard.slo_contract import SloContract


def hopeless(
    records: Sequence[RequestRecord],
    slo: SloContract,
    classes: RequestClasses | None = None,
    *,
    until: float = math.inf,
    cache: dict[int, tuple[bool, int]] | None = None,
) -> str | None:
    """Why the window can no longer meet the SLO, or ``None`` while it still can.

    Args:
        records: Every request of the window (unsent and unfinished ones included).
        slo: The contract.
        classes: Per-request classes of a multi-SLO workload (attainment decides).
        until: Count only requests finished by this time (seconds from the window's start);
            failures count only when it is infinite (a live window, where they are known).
        cache: Each finished request's (TTFT missed, ITL gaps missed), or with classes (deadline
            missed, 0), kept across the checks of one window so a request is measured once.
    """
    done = [r for r in records if r.success and r.token_times[-1] <= until]
    failed = (
        [r for r in records if r.error is not None and not r.error.startswith(ABORT_ERROR)]
        if math.isinf(until)
        else []
    )
    if classes is not None:
        return _attainment_lost(records, done, failed, slo, classes, cache)
    share = slo_contract.allowed_failure_fraction(slo)
    allowed = share * len(records)
    if len(failed) > allowed + 1e-9:
        return f"{len(failed)} of {len(records)} requests failed (at most {allowed:.4g} may)"
    misses = [_misses(r, slo, cache) for r in done]
    ttft_misses = sum(ttft for ttft, _ in misses)
    ttft_allowed = share * (len(records) - len(failed))  # the percentile is over successes
    if ttft_misses > ttft_allowed + 1:
        return (
            f"{ttft_misses} of {len(records)} requests over TTFT {slo.ttft_ms:g} ms "
            f"(p{slo.percentile:g} allows {ttft_allowed:.4g})"
        )
    gaps = sum(max(r.target_output_len - 1, 0) for r in records)
    itl_misses = sum(gaps for _, gaps in misses)
    if itl_misses > share * gaps + 1:
        return (
            f"{itl_misses} of at most {gaps} token gaps over ITL {slo.itl_ms:g} ms "
            f"(p{slo.percentile:g} allows {share * gaps:.4g})"
        )
    return None


def _misses(
    record: RequestRecord, slo: SloContract, cache: dict[int, tuple[bool, int]] | None
) -> tuple[bool, int]:
    """Whether a finished request missed its TTFT, and how many of its gaps missed the ITL."""
    if cache is not None and record.request_id in cache:
        return cache[record.request_id]
    times = record.token_times
    found = (
        bool((times[0] - record.send_time) * 1e3 > slo.ttft_ms),
        int(np.sum(np.diff(times) * 1e3 > slo.itl_ms)),
    )
    if cache is not None:
        cache[record.request_id] = found
    return found


def _attainment_lost(
    records: Sequence[RequestRecord],
    done: list[RequestRecord],
    failed: list[RequestRecord],
    slo: SloContract,
    classes: RequestClasses,
    cache: dict[int, tuple[bool, int]] | None,
) -> str | None:
    """Sessions already missed beyond what the attainment target allows."""
    ids = [r.request_id for r in records]
    sessions = int(np.sum(classes.sessions[ids] == ids))
    missed = {int(classes.sessions[r.request_id]) for r in failed}
    missed |= {
        int(classes.sessions[r.request_id]) for r in done if _missed_deadline(r, classes, cache)
    }
    allowed = (1.0 - slo.attainment_target) * sessions
    if len(missed) > allowed + 1e-9:
        return (
            f"{len(missed)} of {sessions} sessions missed their SLO (attainment target "
            f"{slo.attainment_target:g} allows {allowed:.4g})"
        )
    return None


def _missed_deadline(
    record: RequestRecord, classes: RequestClasses, cache: dict[int, tuple[bool, int]] | None
) -> bool:
    """Whether a finished request of a class missed its TTFT or a token deadline."""
    if cache is not None and record.request_id in cache:
        return cache[record.request_id][0]
    missed = not classes.meets_slo(record.request_id, record.send_time, record.token_times)
    if cache is not None:
        cache[record.request_id] = (missed, 0)
    return missed


def truncate(
    records: Sequence[RequestRecord], slo: SloContract, classes: RequestClasses | None = None
) -> tuple[list[RequestRecord], float, str] | None:
    """Where a finished window would have been aborted: the records finished by then, the
    time and the reason; ``None`` if it never would have (the simulator's early abort).
    """
    ends = sorted({float(r.token_times[-1]) for r in records if r.success})
    measured: dict[int, tuple[bool, int]] = {}
    if not ends or hopeless(records, slo, classes, until=ends[-1], cache=measured) is None:
        return None
    lo, hi = 0, len(ends) - 1  # misses only accumulate: bisect on the first hopeless time
    while lo < hi:
        mid = (lo + hi) // 2
        if hopeless(records, slo, classes, until=ends[mid], cache=measured) is None:
            lo = mid + 1
        else:
            hi = mid
    at = ends[lo]
    reason = hopeless(records, slo, classes, until=at, cache=measured)
    assert reason is not None
    kept = [r for r in records if r.success and r.token_times[-1] <= at]
    return kept, at, reason
