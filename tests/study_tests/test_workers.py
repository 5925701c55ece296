"""Real worker processes on one study: concurrent commands, a killed worker, kill and resume."""

from __future__ import annotations

import datetime
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from optuna.trial import TrialState

from sloguard.study._trials import INFRA_ATTR, WORKER_ATTR, has_result
from tests.study_tests.conftest import (
    assert_store_equals_mlflow,
    finish,
    load_study,
    records,
    start,
)


@pytest.mark.slow
def test_two_commands_started_together_share_one_budget(study_env, tmp_path: Path) -> None:
    args = ["optimizer=tpe", "budget=8", "study_name=w2", "backend.startup_sleep_s=0.2"]
    procs = [start(args, tmp_path, study_env) for _ in range(2)]
    for proc in procs:
        finish(proc)
    study = load_study(tmp_path / "studies", "w2")
    assert len(study.get_trials()) == 8  # never more trials than the budget
    workers = Counter(t.user_attrs[WORKER_ATTR]["pid"] for t in study.get_trials())
    assert len(workers) == 2, "both commands ran trials"
    assert_store_equals_mlflow(study, study_env, "w2", 8)


@pytest.mark.slow
def test_killing_one_of_three_workers_loses_nothing(study_env, tmp_path: Path) -> None:
    args = ["optimizer=tba-tpe", "budget=9", "workers=3", "study_name=w"]
    proc = start([*args, "backend.startup_sleep_s=1.5"], tmp_path, study_env)
    journal = tmp_path / "studies" / "w" / "journal.log"
    victim = None
    deadline = time.monotonic() + 120
    while victim is None and time.monotonic() < deadline:
        time.sleep(0.2)
        if not journal.exists():
            continue
        study = load_study(tmp_path / "studies", "w")
        finished = sum(has_result(t) for t in study.get_trials())
        running = study.get_trials(states=(TrialState.RUNNING,))
        # its knobs stored and started moments ago: well inside its 1.5 s evaluation when the
        # kill lands (a worker killed while proposing leaves no knobs for the re-run to repeat)
        busy = [
            t
            for t in running
            if WORKER_ATTR in t.user_attrs
            and t.params
            and (datetime.datetime.now() - t.datetime_start).total_seconds() < 0.8
        ]
        if finished >= 2 and busy:
            victim = busy[0]
    assert victim is not None, "no worker was seen mid-trial"
    os.kill(victim.user_attrs[WORKER_ATTR]["pid"], signal.SIGKILL)
    out = finish(proc)
    assert "exit -9" in out  # the command says a worker died, and still finishes the budget
    study = load_study(tmp_path / "studies", "w")
    assert_store_equals_mlflow(study, study_env, "w", 9)
    killed = study.get_trials()[victim.number]
    assert killed.state == TrialState.FAIL and "died" in killed.user_attrs[INFRA_ATTR]
    rerun = [t for t in study.get_trials() if t.system_attrs.get("failed_trial") == killed.number]
    assert len(rerun) == 1 and rerun[0].params == killed.params  # re-run with the same knobs
    assert len({t.user_attrs[WORKER_ATTR]["pid"] for t in study.get_trials()}) == 3


@pytest.mark.slow
def test_kill_then_resume_loses_and_repeats_nothing(study_env, tmp_path: Path) -> None:
    """A single worker killed with SIGKILL mid-study, resumed: the same trials, to the bit."""
    args = ["budget=20", "optimizer=tpe"]
    proc = start([*args, "study_name=victim"], tmp_path, study_env)
    journal = tmp_path / "studies" / "victim" / "journal.log"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if journal.exists() and journal.read_bytes().count(b"sloguard:result") >= 5:
                break
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    killed_at = len(records(load_study(tmp_path / "studies", "victim")))
    assert 5 <= killed_at < 20, "the kill must land mid-study"

    finish(start([*args, "study_name=victim"], tmp_path, study_env))
    finish(start([*args, "study_name=reference"], tmp_path, study_env))
    victim = records(load_study(tmp_path / "studies", "victim"))
    reference = records(load_study(tmp_path / "studies", "reference"))
    assert [r.number for r in victim] == list(range(20))
    assert [r.params for r in victim] == [r.params for r in reference]
    assert [str(r.result.metrics) for r in victim] == [str(r.result.metrics) for r in reference]
    assert_store_equals_mlflow(load_study(tmp_path / "studies", "victim"), study_env, "victim", 20)
