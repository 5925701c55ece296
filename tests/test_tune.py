"""The entry points as users run them: Hydra multirun, `mlflow run`, and MLFLOW_RUN_ID."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from tests.conftest import REPO, run_cli

FAST = ["workload=smoke", "progress=false"]


def _runs(env: dict[str, str]):
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    return mlflow.search_runs(search_all_experiments=True)


@pytest.mark.slow
def test_multirun_runs_one_study_per_combination(study_env, tmp_path: Path) -> None:
    proc = run_cli(
        ["-m", "sloguard.tune", "-m", "seed=42,142", "optimizer=random,tpe", "budget=3", *FAST],
        cwd=tmp_path,
        env=study_env,
    )
    assert proc.returncode == 0, proc.stderr
    runs = _runs(study_env)
    studies = runs[runs["tags.sloguard.role"] == "study"]
    assert sorted(zip(studies["tags.optimizer"], studies["tags.seed"], strict=True)) == [
        ("random", "142"),
        ("random", "42"),
        ("tpe", "142"),
        ("tpe", "42"),
    ]
    trials = runs[runs["tags.sloguard.role"] == "trial"]
    assert trials.groupby("tags.mlflow.parentRunId").size().tolist() == [3, 3, 3, 3]
    assert len(list((tmp_path / "studies").glob("*/trials.jsonl"))) == 4


@pytest.mark.slow
def test_multirun_under_an_outer_run_nests_every_study(study_env, tmp_path: Path) -> None:
    mlflow.set_tracking_uri(study_env["MLFLOW_TRACKING_URI"])
    outer = (
        mlflow.MlflowClient()
        .create_run(mlflow.MlflowClient().create_experiment("outer"))
        .info.run_id
    )
    proc = run_cli(
        ["-m", "sloguard.tune", "-m", "seed=1,2", "budget=2", *FAST],
        cwd=tmp_path,
        env={**study_env, "MLFLOW_RUN_ID": outer},
    )
    assert proc.returncode == 0, proc.stderr
    runs = _runs(study_env)
    studies = runs[runs["tags.sloguard.role"] == "study"]
    assert len(studies) == 2 and (studies["tags.mlflow.parentRunId"] == outer).all()


@pytest.mark.slow
def test_mlflow_run_main_entry_point(study_env, tmp_path: Path) -> None:
    """`mlflow run . --env-manager local` logs the study into the run MLflow made."""
    mlflow_cli = Path(sys.executable).with_name("mlflow")  # the one beside this Python
    if not mlflow_cli.exists():
        mlflow_cli = Path(shutil.which("mlflow") or "mlflow")
    mlflow.set_tracking_uri(study_env["MLFLOW_TRACKING_URI"])
    mlflow.MlflowClient().create_experiment("proj", artifact_location=str(tmp_path / "art"))
    proc = subprocess.run(
        [
            str(mlflow_cli),
            "run",
            str(REPO),
            "--env-manager",
            "local",
            "--experiment-name",
            "proj",
            "-P",
            "optimizer=random",
            "-P",
            "seed=3",
            "-P",
            "budget=4",
            "-P",
            "workload=smoke",
        ],
        cwd=tmp_path,
        env={**os.environ, **study_env, "PATH": f"{mlflow_cli.parent}:{os.environ['PATH']}"},
        text=True,
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = _runs(study_env)
    studies = runs[runs["tags.sloguard.role"] == "study"]
    assert len(studies) == 1
    assert studies["tags.mlflow.project.entryPoint"].iloc[0] == "main"  # the run MLflow made
    assert studies["status"].iloc[0] == "FINISHED"
    trials = runs[runs["tags.sloguard.role"] == "trial"]
    assert (
        len(trials) == 4 and (trials["tags.mlflow.parentRunId"] == studies["run_id"].iloc[0]).all()
    )
    assert (tmp_path / "art").is_dir()  # artifacts went where the experiment says


def test_a_study_in_mlflows_default_experiment_says_how_to_keep_studies_together(
    study_env, tmp_path: Path
) -> None:
    """A bare `mlflow run` makes its run in Default before SLO-Guard starts: the study says so."""
    mlflow.set_tracking_uri(study_env["MLFLOW_TRACKING_URI"])
    client = mlflow.MlflowClient()
    client.search_experiments()  # creates the store, and its Default experiment
    made = client.create_run("0").info.run_id
    proc = run_cli(
        ["-m", "sloguard.tune", "budget=2", *FAST],
        cwd=tmp_path,
        env={**study_env, "MLFLOW_RUN_ID": made},
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        "made this study's run in MLflow's Default experiment, not 'sloguard': give it "
        "--experiment-name sloguard" in proc.stderr
    )
    assert client.get_run(made).data.tags["sloguard.role"] == "study"
    assert client.get_experiment("0").tags["mlflow.experimentKind"] == "custom_model_development"


def test_the_best_trial_of_a_gpus_for_rate_study_says_how_many_gpus() -> None:
    from sloguard.tune import _capacity_words

    one = {"capacity_rps": 25.0, "gpus": 4.0, "gpus_needed": 4.0, "replicas_needed": 1.0}
    assert _capacity_words(one, 25.0) == (
        "capacity 25.00 req/s on 4 GPU(s): 4 GPUs serve 25 req/s (1 replica), "
    )
    three = {"capacity_rps": 8.84, "gpus": 2.0, "gpus_needed": 6.0, "replicas_needed": 3.0}
    assert "6 GPUs serve 25 req/s (3 replicas)" in _capacity_words(three, 25.0)
    assert _capacity_words({"goodput_tok_s": 10.0}, None) == ""
