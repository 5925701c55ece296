from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from sloguard.config import ConfigError
from sloguard.experiment_runner import best_trial, run_study
from sloguard.trial_logger import TrialLog

FAST = ("workload=smoke", "progress=false")


def _runs(uri: str):
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=["sloguard"])


def test_study_end_to_end_in_a_real_sqlite_store(compose, study_env) -> None:
    cfg = compose(*FAST, "budget=6", "optimizer=tpe", "seed=5")
    outcome = run_study(cfg)
    runs = _runs(study_env["MLFLOW_TRACKING_URI"])
    study = runs[runs["tags.sloguard.role"] == "study"]
    trials = runs[runs["tags.sloguard.role"] == "trial"]
    assert len(study) == 1 and len(trials) == 6
    assert (trials["tags.mlflow.parentRunId"] == outcome.run_id).all()
    assert sorted(trials["tags.sloguard.trial_number"].astype(int)) == list(range(6))
    for knob in ("max_num_seqs", "enforce_eager", "gpu_memory_utilization"):
        assert trials[f"params.{knob}"].notna().all()
    for metric in (
        "ttft_p50_ms",
        "ttft_p99_ms",
        "itl_p95_ms",
        "goodput_tok_s",
        "attainment",
        "output_throughput_tok_s",
    ):
        assert trials[f"metrics.{metric}"].notna().all()
    assert set(trials["tags.optimizer"]) == {"tpe"} and set(trials["tags.seed"]) == {"5"}
    assert set(trials["tags.crash_category"]) <= {"none", "oom", "cuda", "timeout", "config"}
    assert set(trials["tags.phase"]) == {"tpe"}
    # the study run agrees with the trial log
    best = best_trial(outcome.records)
    assert study["metrics.best_goodput_tok_s"].iloc[0] == pytest.approx(
        best.result.metrics["goodput_tok_s"]
    )
    assert study["params.model.name"].iloc[0] == "qwen2-1.5b"
    client = mlflow.MlflowClient()
    trial_id = trials["run_id"].iloc[0]
    assert {a.path for a in client.list_artifacts(trial_id)} == {"trial.json", "requests.csv"}
    table = client.download_artifacts(trial_id, "requests.csv")
    assert len(Path(table).read_text().splitlines()) == 24 + 1  # smoke: 24 requests
    assert {a.path for a in client.list_artifacts(outcome.run_id)} == {
        "config.yaml",
        "trials.jsonl",
    }


def test_crashes_are_tagged_and_marked_failed(compose, study_env) -> None:
    cfg = compose(
        *FAST,
        "budget=8",
        "optimizer=random",
        "model=llama-3.1-8b",
        "hardware=l4-24gb",
        "space.repair=false",
    )
    outcome = run_study(cfg)
    crashed = [r for r in outcome.records if r.result.crash]
    assert crashed, "this scenario crashes in about half of random trials"
    runs = _runs(study_env["MLFLOW_TRACKING_URI"])
    trials = runs[runs["tags.sloguard.role"] == "trial"]
    bad = trials[trials["tags.crash_category"] != "none"]
    assert len(bad) == len(crashed)
    assert (bad["status"] == "FAILED").all()
    assert bad["tags.crash_evidence"].str.len().min() > 20


def test_resume_continues_exactly_where_an_uninterrupted_study_would_be(
    compose, study_env
) -> None:
    straight = run_study(compose(*FAST, "budget=8", "study_name=straight"))
    run_study(compose(*FAST, "budget=3", "study_name=parts"))
    resumed = run_study(compose(*FAST, "budget=8", "study_name=parts", "resume=true"))
    assert [r.params for r in resumed.records] == [r.params for r in straight.records]
    assert [r.result.metrics for r in resumed.records] == [
        r.result.metrics for r in straight.records
    ]
    runs = _runs(study_env["MLFLOW_TRACKING_URI"])
    parts = runs[runs["tags.study_name"] == "parts"]
    assert (parts["tags.sloguard.role"] == "study").sum() == 1  # the same run, continued
    assert sorted(
        parts[parts["tags.sloguard.role"] == "trial"]["tags.sloguard.trial_number"].astype(int)
    ) == list(range(8))


def test_resume_finds_the_unfinished_study_and_skips_a_finished_one(compose, study_env) -> None:
    first = run_study(compose(*FAST, "budget=2"))
    again = run_study(compose(*FAST, "budget=4", "resume=true"))
    assert again.study_name == first.study_name and len(again.records) == 4
    done = run_study(compose(*FAST, "budget=4", "resume=true"))
    assert done.skipped and done.study_name == first.study_name
    other = run_study(compose(*FAST, "budget=1", "seed=9", "resume=true"))
    assert other.study_name != first.study_name  # another config: a new study


def test_an_existing_study_is_not_overwritten(compose, study_env) -> None:
    run_study(compose(*FAST, "budget=1", "study_name=keep"))
    with pytest.raises(ConfigError, match=r"already has 1 trials.*resume=true"):
        run_study(compose(*FAST, "budget=2", "study_name=keep"))
    with pytest.raises(ConfigError, match=r"another configuration .*optimizer"):
        run_study(compose(*FAST, "budget=2", "study_name=keep", "resume=true", "optimizer=random"))


@pytest.mark.slow
def test_kill_then_resume_loses_and_repeats_nothing(study_env, tmp_path: Path) -> None:
    env = {**os.environ, **study_env}
    args = [sys.executable, "-m", "sloguard.tune", *FAST, "budget=40", "optimizer=tpe"]
    log = tmp_path / "studies" / "victim" / "trials.jsonl"
    proc = subprocess.Popen(
        [*args, "study_name=victim"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if log.exists() and len(log.read_bytes().splitlines()) >= 6:
                break
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    killed_at = len(TrialLog.open(log.parent).records)
    assert 5 <= killed_at < 40, "the kill must land mid-study"

    subprocess.run(
        [*args, "study_name=victim", "resume=true"],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        timeout=240,
    )
    subprocess.run(
        [*args, "study_name=reference"],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        timeout=240,
    )
    victim = TrialLog.open(log.parent).records
    reference = TrialLog.open(tmp_path / "studies" / "reference").records
    assert [r.number for r in victim] == list(range(40))
    assert [r.params for r in victim] == [r.params for r in reference]
    assert [json.dumps(r.result.metrics) for r in victim] == [
        json.dumps(r.result.metrics) for r in reference
    ]
    runs = _runs(study_env["MLFLOW_TRACKING_URI"])
    trials = runs[(runs["tags.study_name"] == "victim") & (runs["tags.sloguard.role"] == "trial")]
    assert sorted(trials["tags.sloguard.trial_number"].astype(int)) == list(range(40))
