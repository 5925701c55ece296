from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import pandas as pd

from sloguard.result import TrialRecord
from sloguard.study import StorageSpec, study_records
from sloguard.study._trials import has_result, number_of, record_of

FAST = ("workload=smoke", "progress=false")


def load_study(study_dir: Path, name: str, storage: str | None = None) -> optuna.Study:
    """A study as its storage has it (the default journal under ``study_dir``)."""
    return optuna.load_study(
        study_name=name, storage=StorageSpec(storage).open(Path(study_dir) / name)
    )


def records(study: optuna.Study) -> list[TrialRecord]:
    return study_records(study.get_trials())


def mlflow_runs(uri: str, study_name: str | None = None) -> pd.DataFrame:
    """Every run of the store (of one study, if named)."""
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(search_all_experiments=True)
    if study_name is not None:
        runs = runs[runs["tags.study_name"] == study_name]
    return runs


TUNE = [sys.executable, "-m", "sloguard.tune", *FAST]


def start(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """One ``sloguard.tune`` command in its own process group."""
    return subprocess.Popen(
        [*TUNE, *args],
        cwd=cwd,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 300) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 0, out[-3000:]
    return out


def assert_store_equals_mlflow(
    study: optuna.Study, env: dict[str, str], name: str, budget: int
) -> None:
    """Every number finished once in the store; MLflow has exactly those runs, all closed."""
    done = [t for t in study.get_trials() if has_result(t)]
    assert sorted(number_of(t) for t in done) == list(range(budget))
    runs = mlflow_runs(env["MLFLOW_TRACKING_URI"], name)
    assert (runs["tags.sloguard.role"] == "study").sum() == 1
    trials = runs[runs["tags.sloguard.role"] == "trial"]
    assert sorted(trials["tags.sloguard.trial_number"].astype(int)) == list(range(budget))
    assert "RUNNING" not in set(runs["status"])
    crashed = {number_of(t) for t in done if record_of(t).result.crash is not None}
    failed = set(trials[trials["status"] == "FAILED"]["tags.sloguard.trial_number"].astype(int))
    assert failed == crashed
