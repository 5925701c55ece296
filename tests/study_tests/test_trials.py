"""Trial slots in a real journal storage: claims, results, dead workers, re-runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sloguard.crash_classifier import CrashCategory, CrashInfo
from sloguard.result import TrialRecord, TrialResult
from sloguard.study import Slots, StorageSpec
from sloguard.study._liveness import identity
from sloguard.study._trials import (
    FIXED,
    INFRA_ATTR,
    WORKER_ATTR,
    claim,
    enqueue_numbers,
    finished_trials,
    number_of,
    reap_dead_trials,
    record_of,
    requeue,
    store_result,
)

PARAMS = {"max_num_seqs": 8, "enforce_eager": True}


@pytest.fixture
def study(tmp_path: Path) -> optuna.Study:
    storage = StorageSpec().open(tmp_path, grace_period=60, on_stale=requeue)
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    enqueue_numbers(study, range(4))
    return study


def _record(number: int, crash: bool = False, utility: float = 10.0) -> TrialRecord:
    result = TrialResult(
        dict(PARAMS),
        metrics={"goodput_tok_s": utility},
        crash=CrashInfo(CrashCategory.OOM, "kv", "No available memory") if crash else None,
        feasible=not crash,
        utility=None if crash else utility,
    )
    return TrialRecord(number, dict(PARAMS), result, "tpe")


def _start(study: optuna.Study, worker: dict | None = None) -> int:
    trial_id = claim(study, study._storage, budget=4)
    assert trial_id is not None
    study._storage.set_trial_user_attr(trial_id, WORKER_ATTR, worker or identity())
    study._storage.set_trial_system_attr(trial_id, FIXED, PARAMS)
    return trial_id


def _dead_worker() -> dict:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    who = identity(proc.pid)
    proc.wait()
    return who


def test_claims_take_each_number_once_and_stop_at_the_budget(study) -> None:
    storage = study._storage
    claimed = [claim(study, storage, budget=3) for _ in range(4)]
    assert claimed[3] is None  # number 3 is beyond the budget
    assert [number_of(storage.get_trial(t)) for t in claimed[:3]] == [0, 1, 2]
    assert Slots.of(study.get_trials(), 4) == Slots(budget=4, finished=0, running=3, waiting=1)


def test_results_crash_and_success(study) -> None:
    ok, crashed = _start(study), _start(study)
    store_result(study, optuna.Trial(study, ok), _record(0, utility=42.0))
    store_result(study, optuna.Trial(study, crashed), _record(1, crash=True))
    by_number = {number_of(t): t for t in study.get_trials()}
    assert by_number[0].state == TrialState.COMPLETE and by_number[0].value == 42.0
    assert by_number[0].constraints == {"violation": 0.0}
    assert by_number[1].state == TrialState.FAIL  # a crash: FAIL, with its result as data
    assert by_number[1].user_attrs["crash_category"] == "oom"
    assert record_of(by_number[1]).result.crash.subcause == "kv"
    assert [number_of(t) for t in finished_trials(study.get_trials())] == [0, 1]


def test_a_dead_workers_trial_is_rerun_first_with_the_same_params(study) -> None:
    storage = study._storage
    dead = _start(study, _dead_worker())
    _start(study)  # number 1, alive (this process)
    assert reap_dead_trials(study, storage, grace_period=60) == 1
    failed = storage.get_trial(dead)
    assert failed.state == TrialState.FAIL and "died" in failed.user_attrs[INFRA_ATTR]
    assert finished_trials(study.get_trials()) == []  # nothing told to any optimizer
    rerun = claim(study, storage, budget=4)
    frozen = storage.get_trial(rerun)
    assert number_of(frozen) == 0 and frozen.system_attrs[FIXED] == PARAMS  # before number 2
    assert frozen.system_attrs["failed_trial"] == failed.number


def test_a_rerun_that_dies_again_is_proposed_afresh(study) -> None:
    storage = study._storage
    _start(study, _dead_worker())
    reap_dead_trials(study, storage, grace_period=60)
    _start(study, _dead_worker())  # the re-run, claimed first, dies too
    reap_dead_trials(study, storage, grace_period=60)
    third = storage.get_trial(claim(study, storage, budget=4))
    assert number_of(third) == 0 and third.system_attrs[FIXED] == {}
    assert len(third.system_attrs["retry_history"]) == 2


def test_a_result_stored_before_the_worker_died_is_kept(study) -> None:
    storage = study._storage
    trial_id = _start(study, _dead_worker())
    trial = optuna.Trial(study, trial_id)
    trial.set_user_attr("sloguard:result", _record(0, utility=7.0).to_dict())  # then killed
    reap_dead_trials(study, storage, grace_period=60)
    frozen = storage.get_trial(trial_id)
    assert frozen.state == TrialState.COMPLETE and frozen.value == 7.0
    assert not [t for t in study.get_trials() if t.system_attrs.get("failed_trial") == 0]


def test_a_claim_without_a_worker_stamp_is_dead_after_the_grace_period(study) -> None:
    storage = study._storage
    claim(study, storage, budget=4)  # claimed, then the worker vanished before stamping it
    assert reap_dead_trials(study, storage, grace_period=60) == 0
    assert reap_dead_trials(study, storage, grace_period=-1) == 1


def test_a_duplicate_queued_number_is_never_run(study) -> None:
    storage = study._storage
    enqueue_numbers(study, [0])  # two processes extended the budget at once
    first = claim(study, storage, budget=4)
    second = claim(study, storage, budget=4)
    assert number_of(storage.get_trial(first)) == 0
    assert number_of(storage.get_trial(second)) == 1  # the duplicate 0 was skipped
    dup = [t for t in study.get_trials() if t.user_attrs.get(INFRA_ATTR, "").startswith("dup")]
    assert len(dup) == 1 and dup[0].state == TrialState.FAIL
