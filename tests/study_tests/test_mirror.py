"""MLflow mirrors the store: the reconciler and `sloguard sync` repair whatever a kill left."""

from __future__ import annotations

import argparse
from pathlib import Path

import mlflow
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from sloguard.study import run_study
from sloguard.study._sync import sync
from tests.conftest import run_cli
from tests.study_tests.conftest import FAST, mlflow_runs


def _trial_runs(uri: str, name: str):
    runs = mlflow_runs(uri, name)
    return runs[runs["tags.sloguard.role"] == "trial"]


def test_sync_repairs_missing_half_logged_and_duplicate_runs(
    compose, study_env, tmp_path: Path
) -> None:
    uri = study_env["MLFLOW_TRACKING_URI"]
    # a finished command: its worker is gone, so nothing can still be logging its trials
    tune = run_cli(["-m", "sloguard.tune", *FAST, "budget=5", "study_name=m"], tmp_path, study_env)
    assert tune.returncode == 0, tune.stderr
    outcome = run_study(compose(*FAST, "budget=5", "study_name=m"))  # already complete
    assert outcome.skipped and len(outcome.records) == 5
    client = mlflow.MlflowClient(uri)
    runs = _trial_runs(uri, "m").set_index("tags.sloguard.trial_number")
    study_run = client.get_run(outcome.run_id)
    # trial 0 never reached MLflow; trial 1 was cut off mid-logging; trial 2 was logged twice
    client.delete_run(runs.loc["0", "run_id"])
    client.delete_run(runs.loc["1", "run_id"])
    half = client.create_run(
        study_run.info.experiment_id,
        tags={MLFLOW_PARENT_RUN_ID: outcome.run_id, "sloguard.trial_number": "1"},
    )
    client.log_param(
        half.info.run_id, "max_num_seqs", outcome.records[1].result.config["max_num_seqs"]
    )
    client.create_run(
        study_run.info.experiment_id,
        tags={MLFLOW_PARENT_RUN_ID: outcome.run_id, "sloguard.trial_number": "2"},
    )
    client.update_run(outcome.run_id, status="RUNNING")

    proc = run_cli(["-m", "sloguard.cli", "sync", "--study", "m"], tmp_path, study_env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        f"study m: 5/5 trials finished, 0 running; MLflow run {outcome.run_id}: "
        "1 trial runs created, 1 completed, 1 duplicates deleted, 0 closed"
    )
    trials = _trial_runs(uri, "m")
    assert sorted(trials["tags.sloguard.trial_number"].astype(int)) == list(range(5))
    assert set(trials["status"]) == {"FINISHED"}
    repaired = trials.set_index("tags.sloguard.trial_number").loc["1"]
    assert repaired["run_id"] == half.info.run_id  # completed in place
    for metric in ("goodput_tok_s", "ttft_p99_ms", "utility"):
        assert repaired[f"metrics.{metric}"] == outcome.records[1].result.metrics.get(
            metric, outcome.records[1].result.utility
        )
    assert client.get_run(outcome.run_id).info.status == "FINISHED"
    options = argparse.Namespace(
        study=None,
        storage=None,
        study_dir=study_env["SLOGUARD_STUDY_DIR"],
        tracking_uri=None,
        grace_period=60,
    )
    (again,) = sync(options)  # every study, in this process this time
    assert again.endswith("0 trial runs created, 0 completed, 0 duplicates deleted, 0 closed")


def test_sync_of_an_unknown_study_is_one_line(study_env, tmp_path: Path) -> None:
    proc = run_cli(["-m", "sloguard.cli", "sync", "--study", "nope"], tmp_path, study_env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"sloguard: error: --study='nope': no such study in {study_env['SLOGUARD_STUDY_DIR']}"
    ]
