"""Tracking against a real `mlflow server` process on 127.0.0.1 (HTTP, as teams deploy it)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from sloguard.study import run_study
from sloguard.tracking import flatten, resolve_tracking_uri


@pytest.mark.slow
def test_study_logs_to_a_real_tracking_server(compose, study_env, mlflow_server) -> None:
    cfg = compose(
        "workload=smoke",
        "progress=false",
        "budget=3",
        f"tracking.uri={mlflow_server}",
        "tracking.experiment=remote",
    )
    outcome = run_study(cfg)
    mlflow.set_tracking_uri(mlflow_server)
    runs = mlflow.search_runs(experiment_names=["remote"])
    trials = runs[runs["tags.sloguard.role"] == "trial"]
    assert len(trials) == 3 and (trials["tags.mlflow.parentRunId"] == outcome.run_id).all()
    client = mlflow.MlflowClient(mlflow_server)
    assert {a.path for a in client.list_artifacts(trials["run_id"].iloc[0])} == {
        "requests.csv",
        "trial.json",
    }
    assert not (Path(study_env["SLOGUARD_STUDY_DIR"]).parent / "mlflow.db").exists()


def test_tracking_uri_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None) == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri(None) == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_flatten() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": "x"}) == {
        "a.b": 1,
        "a.c.d": [1, 2],
        "e": "x",
    }


def test_a_trial_with_a_server_log_gets_it_as_an_artifact(tmp_path, monkeypatch) -> None:
    from sloguard.result import TrialRecord, TrialResult

    monkeypatch.chdir(tmp_path)  # the store's default artifact root is ./mlruns
    from sloguard.tracking import StudyTracker

    log = tmp_path / "trial-000.log"
    log.write_text("INFO CPU KV cache size: 1,024 tokens\n")
    tracker = StudyTracker.start(
        f"sqlite:///{tmp_path / 'mlflow.db'}", "sloguard", "s", common_tags={"optimizer": "x"}
    )
    result = TrialResult(config={"max_num_seqs": 4}, server_log=str(log))
    run_id = tracker.log_trial(TrialRecord(0, {}, result))
    names = [a.path for a in tracker.client.list_artifacts(run_id, "server")]
    assert names == ["server/trial-000.log"]
    local = tracker.client.download_artifacts(run_id, "server/trial-000.log")
    text = Path(local).read_text()
    assert text == log.read_text()
    without = tracker.log_trial(TrialRecord(1, {}, TrialResult(config={"max_num_seqs": 4})))
    assert tracker.client.list_artifacts(without, "server") == []


def test_a_summary_another_process_logged_first_is_kept_once(tmp_path, monkeypatch) -> None:
    """Two workers finishing one study log the same summary; the loser of the race retries."""
    from mlflow.exceptions import MlflowException

    from sloguard.tracking import StudyTracker

    monkeypatch.chdir(tmp_path)  # the store's default artifact root is ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = StudyTracker.start(uri, "sloguard", "s", common_tags={"optimizer": "x"})
    other = mlflow.MlflowClient(uri)
    real_log_batch = tracker.client.log_batch
    lost = []

    def log_batch_losing_the_race(run_id, metrics=(), **kwargs):
        if metrics and not lost:
            lost.append(True)
            other.log_batch(run_id, metrics=metrics)  # the other worker commits first
            raise MlflowException("UNIQUE constraint failed: metrics.key, metrics.timestamp")
        return real_log_batch(run_id, metrics=metrics, **kwargs)

    tracker.client.log_batch = log_batch_losing_the_race  # type: ignore[method-assign]
    tracker.finish({"num_trials": 8, "best_trial": 6}, [], step=7, timestamp_ms=1_000)
    history = other.get_metric_history(tracker.run_id, "num_trials")
    assert lost and [(m.step, m.value) for m in history] == [(7, 8.0)]
    assert other.get_run(tracker.run_id).info.status == "FINISHED"


def test_an_experiment_opens_as_runs_with_a_description_a_users_own_kept(
    tmp_path, monkeypatch
) -> None:
    from sloguard.tracking import StudyTracker, names

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    mine = client.create_experiment("mine", tags={names.NOTE: "my notes"})
    for experiment in ("sloguard", "mine"):
        StudyTracker.start(uri, experiment, f"s-{experiment}", common_tags={})
    ours = client.get_experiment_by_name("sloguard").tags
    assert ours[names.EXPERIMENT_KIND] == "custom_model_development"  # not the GenAI view
    assert ours[names.PRIMARY_METRIC] == "best_goodput_tok_s"
    assert "goodput_tok_s" in ours[names.NOTE] and "crash_category" in ours[names.NOTE]
    assert client.get_experiment(mine).tags[names.NOTE] == "my notes"
    (run,) = client.search_runs([mine])
    assert run.data.tags["mlflow.source.name"]  # MLflow's own context: what started the study
    assert run.data.tags["mlflow.user"]
