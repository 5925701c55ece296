"""A study's trials in its Optuna storage: slots, claims, results, re-runs.

A study of budget ``B`` is created with ``B`` waiting trials, one per trial number (the
``sloguard:number`` user attribute); workers claim them with Optuna's atomic WAITING -> RUNNING
step, so a study never runs more than its budget, whatever the number of workers. A claimed
trial gets its proposal (the ``fixed_params`` system attribute, as Optuna's enqueued trials
have) and its worker's identity; a finished one its result (``sloguard:result``) and, unless it
crashed, its utility as value. Crashes are FAIL trials with a result: data for the optimizers.

A trial whose worker died is failed without a result (an infrastructure event, never told to
an optimizer) and queued again under the same number: with the same proposal the first time,
with a fresh one after that.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from sloguard.optimizer._tpe import crash_constraints
from sloguard.result import TrialRecord
from sloguard.study import _liveness

if TYPE_CHECKING:
    from collections.abc import Sequence

    from optuna.storages import BaseStorage

NUMBER_ATTR = "sloguard:number"  # the trial's number in the study (a re-run keeps it)
RESULT_ATTR = "sloguard:result"  # the finished trial's record
WORKER_ATTR = "sloguard:worker"  # who runs it (see _liveness.identity)
PHASE_ATTR = "sloguard:phase"  # the optimizer phase that proposed it
INFRA_ATTR = "sloguard:infra"  # why it failed without a result (not the configuration's fault)
INFRA_RECORD_ATTR = "sloguard:infra_record"  # the launch's record, when the server failed so
FIXED = "fixed_params"  # Optuna's own key for a trial's preset parameters
MAX_SAME_PARAMS_RERUNS = 1  # a dead worker's proposal is re-run once, then proposed afresh


def number_of(trial: FrozenTrial) -> int:
    """The trial's number in the study (Optuna's own number for trials SLO-Guard did not make)."""
    return int(trial.user_attrs.get(NUMBER_ATTR, trial.number))


def has_result(trial: FrozenTrial) -> bool:
    """Whether the trial finished with a measurement (a crash included)."""
    return RESULT_ATTR in trial.user_attrs


def record_of(trial: FrozenTrial) -> TrialRecord:
    """The finished trial's record."""
    return TrialRecord.from_dict(trial.user_attrs[RESULT_ATTR])


def finished_at(trial: FrozenTrial) -> float:
    """When the trial's result was stored (seconds since epoch)."""
    return float(trial.user_attrs[RESULT_ATTR].get("finished_at", 0.0))


def finished_trials(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Trials with a result, one per number (the first stored), in the order they finished."""
    first: dict[int, FrozenTrial] = {}
    for t in sorted((t for t in trials if has_result(t)), key=lambda t: t.number):
        first.setdefault(number_of(t), t)
    return sorted(first.values(), key=lambda t: (finished_at(t), number_of(t)))


def proposal_of(trial: FrozenTrial) -> dict[str, Any]:
    """The configuration the trial runs (empty until it has been proposed)."""
    return dict(trial.system_attrs.get(FIXED) or {})


def is_infra_failure(trial: FrozenTrial) -> bool:
    """A trial that ended without a result: its worker died or was stopped."""
    return trial.state.is_finished() and not has_result(trial)


@dataclass
class Slots:
    """How far a study is: trial numbers finished, running and waiting."""

    budget: int
    finished: int
    running: int
    waiting: int

    @property
    def complete(self) -> bool:
        return self.finished >= self.budget

    @classmethod
    def of(cls, trials: Sequence[FrozenTrial], budget: int) -> Slots:
        done = {number_of(t) for t in trials if has_result(t)}
        running = {number_of(t) for t in trials if t.state == TrialState.RUNNING} - done
        waiting = {
            number_of(t) for t in trials if t.state == TrialState.WAITING and number_of(t) < budget
        } - done
        return cls(budget, len(done), len(running), len(waiting - running))


def enqueue_numbers(study: optuna.Study, numbers: Sequence[int]) -> None:
    """Queue one waiting trial per number."""
    for number in numbers:
        study.enqueue_trial({}, user_attrs={NUMBER_ATTR: number})


def claim(study: optuna.Study, storage: BaseStorage, budget: int) -> int | None:
    """Atomically take the waiting trial with the lowest number (re-runs first).

    Returns the trial's storage id, or ``None`` when nothing is waiting.

    A queued duplicate of a number another trial already holds (two processes extending the
    budget at once) is claimed and failed, never run.
    """
    trials = study.get_trials(deepcopy=False)
    held = {
        number_of(t) for t in trials if t.state != TrialState.WAITING and not is_infra_failure(t)
    }
    waiting = [t for t in trials if t.state == TrialState.WAITING and number_of(t) < budget]
    for frozen in sorted(waiting, key=lambda t: (number_of(t), t.number)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            study_id(study, storage), frozen.number
        )
        try:
            if not storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                continue  # another worker took it first
        except UpdateFinishedTrialError:
            continue
        if number_of(frozen) in held and "failed_trial" not in frozen.system_attrs:
            storage.set_trial_user_attr(trial_id, INFRA_ATTR, "duplicate of a queued number")
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
            continue
        return trial_id
    return None


def store_result(study: optuna.Study, trial: optuna.Trial, record: TrialRecord) -> None:
    """Store a finished trial: its record, then its value and state (FAIL for a crash).

    Raises:
        UpdateFinishedTrialError: Another worker declared the trial dead meanwhile.
    """
    result = record.result
    trial.set_user_attr(RESULT_ATTR, {**record.to_dict(), "finished_at": time.time()})
    for key, value in _shown(record).items():
        trial.set_user_attr(key, value)
    if result.crash is not None or result.utility is None:
        study.tell(trial, state=TrialState.FAIL)
        return
    for key, violation in crash_constraints(result).items():
        trial.set_constraint(key, violation)
    study.tell(trial, result.utility)


def _shown(record: TrialRecord) -> dict[str, Any]:
    """Attributes shown beside the result, for people browsing the study (optuna-dashboard)."""
    crash = record.result.crash
    return {
        "crash_category": crash.category.value if crash else "none",
        "feasible": record.result.feasible,
    }


def fail_and_requeue(
    study: optuna.Study,
    storage: BaseStorage,
    trial_id: int,
    why: str,
    same_params_reruns: int = MAX_SAME_PARAMS_RERUNS,
) -> bool:
    """Fail a running trial as an infrastructure event and queue its number again.

    A trial whose result was already stored (its worker died between storing and telling) is
    finished with that result instead. Returns whether this call changed the trial (another
    worker may have been first).
    """
    frozen = storage.get_trial(trial_id)
    if frozen.state.is_finished():
        return False
    try:
        if has_result(frozen):
            record = record_of(frozen)
            for key, value in _shown(record).items():
                storage.set_trial_user_attr(trial_id, key, value)
            utility = record.result.utility
            if record.result.crash is None and utility is not None:
                storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [utility])
            else:
                storage.set_trial_state_values(trial_id, TrialState.FAIL)
            return True
        storage.set_trial_user_attr(trial_id, INFRA_ATTR, why)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except UpdateFinishedTrialError:
        return False
    requeue(study, storage.get_trial(trial_id), same_params_reruns)
    return True


def requeue(
    study: optuna.Study, trial: FrozenTrial, same_params_reruns: int = MAX_SAME_PARAMS_RERUNS
) -> None:
    """Queue a failed trial's number again (Optuna's stale-trial callback; also ours).

    The first ``same_params_reruns`` re-runs keep the proposal; later ones ask the optimizer
    afresh, so one configuration that keeps killing its worker cannot stall the study.
    """
    if has_result(trial) or trial.user_attrs.get(INFRA_ATTR, "").startswith("duplicate"):
        return
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    reruns = sum(1 for n in history if n != history[0])
    same = bool(proposal_of(trial)) and reruns < same_params_reruns
    user_attrs = {NUMBER_ATTR: number_of(trial)}
    if same and PHASE_ATTR in trial.user_attrs:
        user_attrs[PHASE_ATTR] = trial.user_attrs[PHASE_ATTR]
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            user_attrs=user_attrs,
            system_attrs={
                FIXED: proposal_of(trial) if same else {},
                "failed_trial": history[0],
                "retry_history": history,
            },
        )
    )


def reap_dead_trials(study: optuna.Study, storage: BaseStorage, grace_period: int) -> int:
    """Fail and requeue the running trials whose worker is gone; returns how many.

    On this machine a dead worker is seen at once (its PID); elsewhere through missing
    heartbeats (:func:`optuna.storages.fail_stale_trials`, which calls :func:`requeue`). A trial
    claimed by a worker that died before stamping it is dead once ``grace_period`` has passed.
    """
    reaped = 0
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get(WORKER_ATTR)
        if worker is not None:
            dead = _liveness.is_alive(worker) is False
            why = f"worker {worker.get('host')}:{worker.get('pid')} died"
        else:
            started = t.datetime_start.timestamp() if t.datetime_start else now
            dead = now - started > grace_period
            why = "claimed by a worker that died before starting it"
        if dead:
            trial_id = storage.get_trial_id_from_study_id_trial_number(
                study_id(study, storage), t.number
            )
            reaped += fail_and_requeue(study, storage, trial_id, why)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        before = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
        optuna.storages.fail_stale_trials(study)
        reaped += len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,))) - before
    return reaped


def infra_streak(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The launches that failed through no fault of their configuration since the last result."""
    ended = sorted(
        (t for t in trials if t.state.is_finished() and t.datetime_complete is not None),
        key=lambda t: t.datetime_complete,  # type: ignore[arg-type,return-value]
    )
    streak: list[FrozenTrial] = []
    for t in reversed(ended):
        if has_result(t):
            break
        if INFRA_RECORD_ATTR in t.user_attrs:
            streak.append(t)
    return streak


def stop_trial(study: optuna.Study, storage: BaseStorage, trial_id: int, why: str) -> None:
    """Fail this worker's own trial as interrupted and queue it again (never raises)."""
    with contextlib.suppress(Exception):
        fail_and_requeue(study, storage, trial_id, why)


def study_id(study: optuna.Study, storage: BaseStorage) -> int:
    """The study's id in ``storage``."""
    return storage.get_study_id_from_name(study.study_name)
