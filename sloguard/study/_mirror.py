"""MLflow as a mirror of the study's storage, reconciled after any kill.

Each worker logs its own trial right after storing it. The reconciler, run when a command
starts on a study, when the study ends and by ``sloguard sync``, makes MLflow equal the store:
a finished trial without a run gets one, a half-logged (still RUNNING) run is completed, a
duplicate run of the same trial is deleted, a RUNNING run of a trial that has no result is
closed as KILLED, and the study's curves get their missing points. Trials that a live worker
elsewhere may still be logging are left to it for ``settle_s`` seconds.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sloguard.study import _liveness
from sloguard.study._summary import progress_points
from sloguard.study._trials import WORKER_ATTR, finished_at, finished_trials, record_of
from sloguard.tracking import TrialRun, is_terminated, names

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from optuna.trial import FrozenTrial

    from sloguard.tracking import StudyTracker


@dataclass
class MirrorReport:
    """What a reconciliation changed in MLflow."""

    created: int = 0
    completed: int = 0
    deleted: int = 0
    closed: int = 0

    def __str__(self) -> str:
        return (
            f"{self.created} trial runs created, {self.completed} completed, "
            f"{self.deleted} duplicates deleted, {self.closed} closed"
        )


def requests_csv(directory: Path, number: int) -> Path:
    """Where a trial's per-request table is written on the machine that ran it."""
    return directory / "requests" / f"trial-{number:03d}.csv"


def log_trial(
    tracker: StudyTracker, trial: FrozenTrial, directory: Path, run_id: str | None = None
) -> str:
    """Log one finished trial (or complete its half-logged run ``run_id``)."""
    record = record_of(trial)
    return tracker.log_trial(
        record,
        requests_csv(directory, record.number),
        run_id=run_id,
        finished_ms=int(finished_at(trial) * 1000),
        extra_tags={names.OPTUNA_TRIAL: str(trial.number)},
    )


def log_progress(tracker: StudyTracker, trials: Sequence[FrozenTrial], objective: str) -> None:
    """Log the study curves' points that MLflow does not have yet."""
    logged = tracker.progress_steps()
    missing = [p for p in progress_points(trials) if p.step not in logged]
    if missing:
        tracker.log_progress(missing, objective)


def reconcile(
    tracker: StudyTracker,
    trials: Sequence[FrozenTrial],
    directory: Path,
    objective: str,
    settle_s: float,
) -> MirrorReport:
    """Make the study's MLflow runs equal its stored trials."""
    report = MirrorReport()
    runs: dict[int, list[TrialRun]] = defaultdict(list)
    for run in tracker.trial_runs():
        runs[run.number].append(run)
    finished = {record_of(t).number: t for t in finished_trials(trials)}
    now = time.time()
    for number, trial in sorted(finished.items()):
        existing = sorted(runs.pop(number, []), key=lambda r: not is_terminated(r.status))
        for extra in existing[1:]:
            tracker.delete_run(extra.run_id)
            report.deleted += 1
        if existing and is_terminated(existing[0].status):
            continue
        if not _settled(trial, now, settle_s):
            continue  # its worker may be logging it right now
        log_trial(tracker, trial, directory, existing[0].run_id if existing else None)
        if existing:
            report.completed += 1
        else:
            report.created += 1
    for leftover in (r for rs in runs.values() for r in rs):
        if not is_terminated(leftover.status):
            tracker.client.set_terminated(leftover.run_id, "KILLED")
            report.closed += 1
    log_progress(tracker, trials, objective)
    return report


def _settled(trial: FrozenTrial, now: float, settle_s: float) -> bool:
    """Whether nobody else can still be logging ``trial`` (its worker is gone, or is us)."""
    worker = trial.user_attrs.get(WORKER_ATTR) or {}
    if _liveness.is_self(worker) or _liveness.is_alive(worker) is False:
        return True
    return now - finished_at(trial) > settle_s
