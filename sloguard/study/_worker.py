"""The worker loop: claim a trial, propose, evaluate, store, mirror; until the budget is done.

Any number of workers, in this process, in child processes or on other machines, run this loop
against one study. While a trial runs, a thread records its heartbeat. A worker with nothing
left to claim waits while other workers' trials run: if one of them dies, its trial is queued
again and someone must run it.
"""

from __future__ import annotations

import csv
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from sloguard import signals
from sloguard.metrics_collector import requests_table
from sloguard.optimizer._tpe import suggest
from sloguard.study import _liveness
from sloguard.study._mirror import log_progress, log_trial, requests_csv
from sloguard.study._study import STOPPED_ATTR
from sloguard.study._trials import (
    FIXED,
    INFRA_RECORD_ATTR,
    PHASE_ATTR,
    WORKER_ATTR,
    Slots,
    claim,
    fail_and_requeue,
    finished_trials,
    infra_streak,
    number_of,
    proposal_of,
    reap_dead_trials,
    record_of,
    stop_trial,
    store_result,
)

if TYPE_CHECKING:
    from pathlib import Path

    from optuna.storages import BaseStorage

    from sloguard.evaluation import TrialStep
    from sloguard.result import TrialRecord
    from sloguard.study._proposer import Proposer
    from sloguard.study._study import StudyHandle


@dataclass
class WorkerSettings:
    """How a worker runs.

    Args:
        heartbeat_interval: Seconds between heartbeats of the running trial.
        log_requests: Write and log each trial's per-request table.
        poll_s: Seconds between looks at the study while waiting for other workers.
        infra_retries: Launches of a configuration again after a failure that is not its
            fault; twice that many such failures in a row stop the study.
    """

    heartbeat_interval: int = 10
    log_requests: bool = True
    poll_s: float = 0.5
    infra_retries: int = 1


class StudyStopped(RuntimeError):
    """Launches keep failing through no fault of their configurations (one line says why)."""


class Worker:
    """Runs a study's trials until it holds its budget of finished ones.

    Args:
        handle: The open study.
        step: Evaluates one configuration as one trial.
        proposer: Asks the optimizer, its state rebuilt from the study.
        settings: Heartbeat, request tables, polling.
        on_trial: Called with each trial this worker finished.
    """

    def __init__(
        self,
        handle: StudyHandle,
        step: TrialStep,
        proposer: Proposer,
        settings: WorkerSettings,
        on_trial: Callable[[TrialRecord], None] | None = None,
    ) -> None:
        self.handle = handle
        self.step = step
        self.proposer = proposer
        self.settings = settings
        self.on_trial = on_trial

    def run(self) -> int:
        """Work until nothing is left to run; returns how many trials this worker ran.

        SIGINT and SIGTERM stop it inside a trial's evaluation or a wait, never halfway through
        writing the storage or MLflow.
        """
        handle = self.handle
        ran = 0
        while True:
            with signals.deferred():
                if (why := handle.stopped()) is not None:
                    raise StudyStopped(why)
                reap_dead_trials(handle.study, handle.storage, handle.grace_period)
                budget = handle.budget()
                trial_id = claim(handle.study, handle.storage, budget)
                if trial_id is not None:
                    ran += self._run_trial(trial_id)
                    continue
                slots = Slots.of(handle.trials(), budget)
                if slots.running == 0 and slots.waiting == 0:
                    return ran
            with signals.allowed():
                time.sleep(self.settings.poll_s)

    def _run_trial(self, trial_id: int) -> bool:
        """Run one claimed trial; whether its result was stored."""
        handle, storage = self.handle, self.handle.storage
        storage.set_trial_user_attr(trial_id, WORKER_ATTR, _liveness.identity())
        try:
            with _Heartbeat(storage, trial_id, self.settings.heartbeat_interval):
                record = self._evaluate(trial_id)
                crash = record.result.crash
                if crash is not None and not crash.configuration_fault:
                    self._infra_failure(trial_id, record)
                    return False
                trial = optuna.Trial(handle.study, trial_id)
                try:
                    store_result(handle.study, trial, record)
                except (UpdateFinishedTrialError, RuntimeError, ValueError) as e:
                    if storage.get_trial(trial_id).state == TrialState.RUNNING:
                        raise
                    print(
                        f"sloguard: trial {record.number} was declared dead while it ran "
                        f"({type(e).__name__}); its re-run counts",
                        file=sys.stderr,
                    )
                    return False
        except BaseException as e:
            stop_trial(handle.study, storage, trial_id, f"worker stopped: {type(e).__name__}")
            raise
        frozen = storage.get_trial(trial_id)
        log_trial(handle.tracker, frozen, handle.directory)
        log_progress(handle.tracker, handle.trials(), handle.objective)
        if self.on_trial is not None:
            self.on_trial(record)
        return True

    def _infra_failure(self, trial_id: int, record: TrialRecord) -> None:
        """Fail the trial without a result and queue it again; stop a study where it repeats.

        The optimizer never sees it: it is not a crash of the configuration.
        """
        handle, retries = self.handle, self.settings.infra_retries
        crash = record.result.crash
        assert crash is not None
        why = f"{crash.category.value}/{crash.subcause}: {crash.evidence}"
        handle.storage.set_trial_user_attr(trial_id, INFRA_RECORD_ATTR, record.to_dict())
        fail_and_requeue(handle.study, handle.storage, trial_id, why, retries)
        streak = infra_streak(handle.trials())
        print(
            f"sloguard: trial {record.number} failed through no fault of its configuration "
            f"({why[:300]}); it runs again",
            file=sys.stderr,
        )
        if len(streak) >= 2 * (retries + 1):
            reason = (
                f"study {handle.name} stopped: the last {len(streak)} launches failed through no "
                f"fault of their configurations; the latest: {why[:300]}"
            )
            handle.study.set_user_attr(STOPPED_ATTR, reason)
            raise StudyStopped(reason)

    def _evaluate(self, trial_id: int) -> TrialRecord:
        """Propose (unless the trial is a re-run with its proposal), record params, evaluate."""
        handle, storage = self.handle, self.handle.storage
        frozen = storage.get_trial(trial_id)
        number = number_of(frozen)
        params = proposal_of(frozen)
        phase = str(frozen.user_attrs.get(PHASE_ATTR, ""))
        if not params:
            trials = handle.trials()
            running = [
                proposal_of(t)
                for t in trials
                if t.state == TrialState.RUNNING and t.number != frozen.number and proposal_of(t)
            ]
            finished = [record_of(t) for t in finished_trials(trials)]
            params, phase = self.proposer.propose(number, finished, running)
            storage.set_trial_system_attr(trial_id, FIXED, params)
            storage.set_trial_user_attr(trial_id, PHASE_ATTR, phase)
        suggest(optuna.Trial(handle.study, trial_id), self.step.space)  # params, as Optuna shows
        with signals.allowed():
            record = self.step.evaluate(params, number, phase)
        if self.settings.log_requests and record.result.requests:
            _write_requests(requests_csv(handle.directory, number), self.step, record)
        return record


class _Heartbeat:
    """Records a trial's heartbeat now and every ``interval`` seconds until stopped."""

    def __init__(self, storage: BaseStorage, trial_id: int, interval: float) -> None:
        self.storage = storage
        self.trial_id = trial_id
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self) -> None:
        self.storage.record_heartbeat(self.trial_id)  # type: ignore[attr-defined]
        self._thread.start()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 - the trial was finished elsewhere; stop beating
                return


def _write_requests(path: Path, step: TrialStep, record: TrialRecord) -> None:
    """Write the per-request table atomically (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = requests_table(
        record.result.requests, step.slo, step.workload.classes
    )
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
