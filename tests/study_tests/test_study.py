"""Opening studies: create, join, resume, extend, refuse; end to end in real sqlite stores."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from sloguard.exceptions import ConfigError
from sloguard.study import best_trial, run_study
from sloguard.study._study import CONFIG_ATTR, CONFIG_HASH_ATTR
from tests.study_tests.conftest import FAST, load_study, mlflow_runs, records


def test_study_end_to_end_in_a_real_sqlite_store(compose, study_env) -> None:
    outcome = run_study(compose(*FAST, "budget=6", "optimizer=tpe", "seed=5"))
    runs = mlflow_runs(study_env["MLFLOW_TRACKING_URI"])
    study = runs[runs["tags.sloguard.role"] == "study"]
    trials = runs[runs["tags.sloguard.role"] == "trial"]
    assert len(study) == 1 and len(trials) == 6
    assert (trials["tags.mlflow.parentRunId"] == outcome.run_id).all()
    assert sorted(trials["tags.sloguard.trial_number"].astype(int)) == list(range(6))
    assert set(trials["status"]) == {"FINISHED"} and study["status"].iloc[0] == "FINISHED"
    for knob in ("max_num_seqs", "enforce_eager", "gpu_memory_utilization"):
        assert trials[f"params.{knob}"].notna().all()
    for metric in ("ttft_p99_ms", "itl_p95_ms", "goodput_tok_s", "attainment", "utility"):
        assert trials[f"metrics.{metric}"].notna().all()
    assert set(trials["tags.optimizer"]) == {"tpe"} and set(trials["tags.seed"]) == {"5"}
    assert set(trials["tags.phase"]) == {"tpe"}
    # the store is the source: the study run, the outcome and the storage agree
    stored = records(load_study(Path(study_env["SLOGUARD_STUDY_DIR"]), outcome.study_name))
    assert [r.number for r in stored] == list(range(6))
    assert [r.params for r in stored] == [r.params for r in outcome.records]
    best = best_trial(stored)
    assert study["metrics.best_goodput_tok_s"].iloc[0] == pytest.approx(
        best.result.metrics["goodput_tok_s"]
    )
    assert study["params.model.name"].iloc[0] == "qwen2-1.5b"
    assert study["tags.sloguard.storage"].iloc[0].endswith(f"{outcome.study_name}/journal.log")
    client = mlflow.MlflowClient()
    trial_id = trials["run_id"].iloc[0]
    assert {a.path for a in client.list_artifacts(trial_id)} == {"trial.json", "requests.csv"}
    table = client.download_artifacts(trial_id, "requests.csv")
    assert len(Path(table).read_text().splitlines()) == 24 + 1  # smoke: 24 requests
    assert {a.path for a in client.list_artifacts(outcome.run_id)} == {
        "config.yaml",
        "trials.jsonl",
        "best_config.yaml",  # the best configuration as `vllm serve --config` reads it
    }
    # the curves end on the summary: no point jumps back to step 0 after the last trial
    history = client.get_metric_history(outcome.run_id, "best_goodput_tok_s")
    assert sorted({m.step for m in history}) == list(range(6))


def test_a_per_gpu_study_curves_and_ranks_capacity_per_gpu(compose, study_env) -> None:
    cfg = compose(
        "progress=false", "budget=5", "optimizer=random", "seed=3", "model=llama-3.1-8b",
        "hardware=4xl4-24gb", "workload=chatbot", "workload.num_requests=60",
        "objective=capacity_per_gpu", "capacity.rel_tol=0.2",
        "space.tensor_parallel_size=[1,2,4]", "space.data_parallel_size=[1,2]",
    )  # fmt: skip
    outcome = run_study(cfg)
    best = best_trial(outcome.records)
    assert best is not None
    metrics = best.result.metrics
    gpus = best.result.config["tensor_parallel_size"] * best.result.config["data_parallel_size"]
    assert metrics["gpus"] == gpus and best.result.utility == metrics["capacity_per_gpu_rps"]
    assert metrics["capacity_per_gpu_rps"] == pytest.approx(metrics["capacity_rps"] / gpus)
    feasible = [r.result for r in outcome.records if r.result.feasible]
    assert best.result.utility == max(r.metrics["capacity_per_gpu_rps"] for r in feasible)
    runs = mlflow_runs(study_env["MLFLOW_TRACKING_URI"])
    study = runs[runs["tags.sloguard.role"] == "study"]
    assert study["metrics.best_capacity_per_gpu_rps"].iloc[0] == pytest.approx(best.result.utility)
    assert study["metrics.best_gpus"].iloc[0] == gpus
    history = mlflow.MlflowClient().get_metric_history(outcome.run_id, "best_capacity_per_gpu_rps")
    assert sorted({m.step for m in history}) == list(range(5))


def test_a_gpus_for_rate_study_ranks_the_fewest_gpus(compose, study_env) -> None:
    cfg = compose(
        "progress=false", "budget=5", "optimizer=random", "seed=3", "model=llama-3.1-8b",
        "hardware=4xl4-24gb", "workload=chatbot", "workload.num_requests=60",
        "objective=gpus_for_rate", "capacity.target_rps=25", "capacity.rel_tol=0.2",
        "space.tensor_parallel_size=[1,2,4]", "space.data_parallel_size=[1,2]",
    )  # fmt: skip
    outcome = run_study(cfg)
    best = best_trial(outcome.records)
    assert best is not None
    feasible = [r.result.metrics for r in outcome.records if r.result.feasible]
    fewest = min(m["gpus_needed"] for m in feasible)
    assert len({m["gpus_needed"] for m in feasible}) > 1  # a choice was made
    assert best.result.metrics["gpus_needed"] == fewest
    assert best.result.utility == pytest.approx(25 / fewest)
    runs = mlflow_runs(study_env["MLFLOW_TRACKING_URI"])
    study = runs[runs["tags.sloguard.role"] == "study"]
    assert study["metrics.best_target_per_gpu_rps"].iloc[0] == pytest.approx(25 / fewest)
    assert study["metrics.best_gpus_needed"].iloc[0] == fewest
    history = mlflow.MlflowClient().get_metric_history(outcome.run_id, "best_target_per_gpu_rps")
    assert sorted({m.step for m in history}) == list(range(5))


def test_crashes_are_failed_trials_with_their_category(compose, study_env) -> None:
    cfg = compose(
        *FAST, "budget=8", "optimizer=random", "model=llama-3.1-8b", "hardware=l4-24gb",
        "space.repair=false",
    )  # fmt: skip
    outcome = run_study(cfg)
    crashed = [r for r in outcome.records if r.result.crash]
    assert crashed, "this scenario crashes in about half of random trials"
    trials = mlflow_runs(study_env["MLFLOW_TRACKING_URI"])
    trials = trials[trials["tags.sloguard.role"] == "trial"]
    bad = trials[trials["tags.crash_category"] != "none"]
    assert len(bad) == len(crashed) and (bad["status"] == "FAILED").all()
    assert bad["tags.crash_evidence"].str.len().min() > 20
    study = load_study(Path(study_env["SLOGUARD_STUDY_DIR"]), outcome.study_name)
    failed = [t for t in study.get_trials() if t.state.name == "FAIL"]
    assert len(failed) == len(crashed)
    assert {t.user_attrs["crash_category"] for t in failed} == {
        r.result.crash.category.value for r in crashed
    }


def test_a_larger_budget_continues_exactly_as_an_uninterrupted_study(compose, study_env) -> None:
    # TPE's proposals do not depend on the budget (TBA's annealing and handoff do: below)
    straight = run_study(compose(*FAST, "optimizer=tpe", "budget=8", "study_name=straight"))
    run_study(compose(*FAST, "optimizer=tpe", "budget=3", "study_name=parts"))
    resumed = run_study(compose(*FAST, "optimizer=tpe", "budget=8", "study_name=parts"))
    assert [r.params for r in resumed.records] == [r.params for r in straight.records]
    assert [r.result.metrics for r in resumed.records] == [
        r.result.metrics for r in straight.records
    ]
    runs = mlflow_runs(study_env["MLFLOW_TRACKING_URI"], "parts")
    assert (runs["tags.sloguard.role"] == "study").sum() == 1  # the same run, continued
    trials = runs[runs["tags.sloguard.role"] == "trial"]
    assert sorted(trials["tags.sloguard.trial_number"].astype(int)) == list(range(8))


def test_a_larger_budget_keeps_a_budget_aware_optimizers_trials(compose, study_env) -> None:
    first = run_study(compose(*FAST, "optimizer=tba-tpe", "budget=2", "study_name=tt"))
    more = run_study(compose(*FAST, "optimizer=tba-tpe", "budget=10", "study_name=tt"))
    assert [r.params for r in more.records[:2]] == [r.params for r in first.records]
    assert [r.number for r in more.records] == list(range(10))
    # budget 2 handed off after 1 trial; the new trials follow budget 10's (after 4)
    assert [r.phase for r in first.records] == ["explore", "exploit"]
    assert [r.phase for r in more.records[2:]] == ["explore"] * 2 + ["exploit"] * 6


def test_resume_finds_the_newest_study_of_this_config(compose, study_env) -> None:
    first = run_study(compose(*FAST, "budget=2"))
    again = run_study(compose(*FAST, "budget=4", "resume=true"))
    assert again.study_name == first.study_name and len(again.records) == 4
    done = run_study(compose(*FAST, "budget=4", "resume=true"))
    assert done.skipped and done.study_name == first.study_name
    other = run_study(compose(*FAST, "budget=1", "seed=9", "resume=true"))
    assert other.study_name != first.study_name  # another config: a new study


def test_another_configuration_under_the_same_name_is_refused_untouched(
    compose, study_env
) -> None:
    run_study(compose(*FAST, "budget=1", "study_name=keep"))
    journal = Path(study_env["SLOGUARD_STUDY_DIR"]) / "keep" / "journal.log"
    before = journal.read_bytes()
    runs_before = len(mlflow_runs(study_env["MLFLOW_TRACKING_URI"]))
    with pytest.raises(ConfigError, match=r"another configuration \(differs in: .*optimizer"):
        run_study(compose(*FAST, "budget=2", "study_name=keep", "optimizer=random"))
    with pytest.raises(ConfigError, match=r"differs in: workload.num_requests"):
        run_study(compose(*FAST, "budget=2", "study_name=keep", "workload.num_requests=30"))
    assert journal.read_bytes() == before
    assert len(mlflow_runs(study_env["MLFLOW_TRACKING_URI"])) == runs_before


def _as_an_earlier_version_stored_it(study_env, name: str) -> None:
    """Drop the keys added since (the prior) from the stored config, and its hash with them."""
    study = load_study(Path(study_env["SLOGUARD_STUDY_DIR"]), name)
    config = dict(study.user_attrs[CONFIG_ATTR])
    del config["prior"]
    study.set_user_attr(CONFIG_ATTR, config)
    study.set_user_attr(CONFIG_HASH_ATTR, "from-an-earlier-version")


def test_a_study_stored_by_an_earlier_version_continues_after_an_upgrade(
    compose, study_env
) -> None:
    """Keys added since count as the same while left at their defaults; set, they differ."""
    run_study(compose(*FAST, "budget=2", "study_name=old"))
    _as_an_earlier_version_stored_it(study_env, "old")
    with pytest.raises(ConfigError, match=r"differs in: prior.name"):
        run_study(compose(*FAST, "budget=3", "study_name=old", "prior=sim"))
    assert len(run_study(compose(*FAST, "budget=3", "study_name=old")).records) == 3
    again = run_study(compose(*FAST, "budget=4", "resume=true"))
    assert again.study_name == "old" and len(again.records) == 4


def test_bad_storage_and_tracking_uris_write_nothing(compose, study_env, tmp_path) -> None:
    for bad, message in (
        ("storage=postgresql://me:pw@127.0.0.1:1/db", "cannot be opened"),
        (f"storage={tmp_path}/no/such/dir/j.log", "does not exist"),
        ("tracking.uri=sqlite:////proc/nope/mlflow.db", "tracking.uri=.*cannot be opened"),
    ):
        with pytest.raises(ConfigError, match=message):
            run_study(compose(*FAST, bad, "study_name=x"))
    assert not (tmp_path / "studies").exists()
    assert not (tmp_path / "mlflow.db").exists()


def test_many_studies_in_one_sqlite_storage(compose, study_env, tmp_path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    a = run_study(compose(*FAST, "budget=2", f"storage={storage}", "seed=1"))
    b = run_study(compose(*FAST, "budget=2", f"storage={storage}", "seed=2"))
    assert a.study_name != b.study_name
    again = run_study(compose(*FAST, "budget=3", f"storage={storage}", "seed=1", "resume=true"))
    assert again.study_name == a.study_name and len(again.records) == 3
    assert [r.params for r in again.records[:2]] == [r.params for r in a.records]
    assert len(load_study(tmp_path, a.study_name, storage).get_trials()) == 3
