"""Early abort: stop a measurement window once the SLO verdict can no longer change.

A window of ``N`` requests is certain to miss a percentile SLO once more than the share the
percentile leaves (1% at p99) of all ``N`` have already missed, whatever the rest do: their
failures, or completed requests whose TTFT or inter-token gaps are over the limit. With request
classes it is certain once more sessions have missed than the attainment target allows. Only
finished requests count (a request still streaming may yet make it), and the percentile rule
keeps a margin of one request for interpolation, so an aborted trial is always one that would
have been infeasible.

A capacity probe is judged on attainment alone: :class:`AttainmentWatch` says when more sessions
(requests, without classes) have missed than the attainment target allows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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


ATTAINMENT_MAX = "attainment_max"  # metric of a load stopped once its target was lost


def request_met(record: RequestRecord, slo: SloContract, classes: RequestClasses | None) -> bool:
    """Whether an ended request met its SLO as attainment counts it: it succeeded and met its
    class's deadlines (with classes), or the TTFT, TPOT and E2EL limits (without)."""
    if not record.success:
        return False
    if classes is not None:
        return classes.meets_slo(record.request_id, record.send_time, record.token_times)
    return slo.request_is_good(*slo_contract.request_latencies(record))


class AttainmentWatch:
    """Counts, as requests end, the sessions that missed (a session misses when one of its
    rounds does; without classes each request is a session); the attainment target is out of
    reach once more have missed than it allows, whatever the others do.

    Args:
        num_requests: Requests in the window (every round).
        slo: The contract (its attainment target, and the limits without classes).
        classes: Per-request classes and sessions of a multi-SLO workload.
    """

    def __init__(
        self, num_requests: int, slo: SloContract, classes: RequestClasses | None
    ) -> None:
        self.slo = slo
        self.classes = classes
        sessions = (
            num_requests
            if classes is None
            else int(np.sum(classes.sessions[:num_requests] == np.arange(num_requests)))
        )
        self.sessions = sessions
        self.allowed = (1.0 - slo.attainment_target) * sessions
        self.missed: set[int] = set()
        self._counted: set[int] = set()  # requests :meth:`poll` has counted

    def ended(self, record: RequestRecord) -> None:
        """Count ``record``, which has finished or failed (call once per request)."""
        if not request_met(record, self.slo, self.classes):
            self.miss(record.request_id)

    def poll(self, records: Sequence[RequestRecord]) -> None:
        """Count every record of a live window that has ended since the last poll (finished,
        or failed other than by the early stop itself)."""
        for record in records:
            rid = record.request_id
            failed = record.error is not None and not record.error.startswith(ABORT_ERROR)
            if rid not in self._counted and (record.success or failed):
                self._counted.add(rid)
                self.ended(record)

    def miss(self, rid: int) -> None:
        """Count request ``rid`` as missed before it ends (its first token is overdue)."""
        self.missed.add(rid if self.classes is None else int(self.classes.sessions[rid]))

    def most(self) -> float:
        """The highest attainment the window can still reach (every other session meets it)."""
        return 1.0 - len(self.missed) / self.sessions if self.sessions else 0.0

    def lost(self) -> str | None:
        """Why the target can no longer be met, or ``None`` while it still can."""
        if len(self.missed) <= self.allowed + 1e-9:
            return None
        return (
            f"{len(self.missed)} of {self.sessions} sessions missed their SLO (attainment target "
            f"{self.slo.attainment_target:g} allows {self.allowed:.4g})"
        )


def truncate(
    records: Sequence[RequestRecord], slo: SloContract, classes: RequestClasses | None = None
) -> tuple[list[RequestRecord], float, str] | None:
    """Where a finished window would have been aborted: the records finished by then, the
    time and the reason; ``None`` if it never would have (the simulator's early abort).
    """
    measured: dict[int, tuple[bool, int]] = {}
    at = _first_hopeless_end(records, slo, classes, measured)
    if at is None:
        return None
    reason = hopeless(records, slo, classes, until=at, cache=measured)
    assert reason is not None
    kept = [r for r in records if r.success and r.token_times[-1] <= at]
    return kept, at, reason


def _first_hopeless_end(
    records: Sequence[RequestRecord],
    slo: SloContract,
    classes: RequestClasses | None,
    cache: dict[int, tuple[bool, int]],
) -> float | None:
    """The first completion time at which :func:`hopeless` (``until`` that time) holds, in one
    pass over the finished requests in completion order (misses only accumulate)."""
    over: Callable[[RequestRecord], bool]
    if classes is not None:
        ids = [r.request_id for r in records]
        allowed = (1.0 - slo.attainment_target) * int(np.sum(classes.sessions[ids] == ids))
        missed: set[int] = set()

        def over(record: RequestRecord) -> bool:
            if _missed_deadline(record, classes, cache):
                missed.add(int(classes.sessions[record.request_id]))
            return len(missed) > allowed + 1e-9

    else:
        share = slo_contract.allowed_failure_fraction(slo)
        gaps = sum(max(r.target_output_len - 1, 0) for r in records)
        counts = [0, 0]  # TTFT misses, ITL gaps missed

        def over(record: RequestRecord) -> bool:
            ttft, itl = _misses(record, slo, cache)
            counts[0] += ttft
            counts[1] += itl
            return counts[0] > share * len(records) + 1 or counts[1] > share * gaps + 1

    finished = sorted((float(r.token_times[-1]), i) for i, r in enumerate(records) if r.success)
    # once over, still over with the rest finishing at the same time: that time is the answer
    return next((end for end, i in finished if over(records[i])), None)
