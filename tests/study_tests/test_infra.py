"""Failures that are not the configuration's fault: retried, never told, a study that stops."""

from __future__ import annotations

from pathlib import Path

import pytest

from sloguard.backends.sim import SimBackend
from sloguard.crash_classifier import CrashCategory, CrashInfo
from sloguard.result import TrialResult
from sloguard.study import StudyStopped, run_study
from sloguard.study._trials import INFRA_ATTR, INFRA_RECORD_ATTR, has_result, number_of
from tests.study_tests.conftest import FAST, load_study, mlflow_runs, records

_PORT_IN_USE = CrashInfo(
    CrashCategory.INFRA, "port_in_use", "OSError: [Errno 98] Address already in use"
)


def _failing_launches(monkeypatch: pytest.MonkeyPatch, fails: set[int]) -> list[dict]:
    """Make the sim's launches number ``fails`` (0-based, in call order) infra failures."""
    real, launches = SimBackend.evaluate, []

    def evaluate(self, config, workload, slo, *, seed, log_path=None) -> TrialResult:
        launches.append(dict(config))
        if len(launches) - 1 in fails:
            return TrialResult(dict(config), crash=_PORT_IN_USE)
        return real(self, config, workload, slo, seed=seed, log_path=log_path)

    monkeypatch.setattr(SimBackend, "evaluate", evaluate)
    return launches


def test_an_infra_failure_runs_again_and_never_reaches_the_optimizer(
    compose, study_env, monkeypatch
) -> None:
    launches = _failing_launches(monkeypatch, {2})
    outcome = run_study(compose(*FAST, "budget=5", "optimizer=tba-tpe", "seed=3"))
    assert len(launches) == 6 and launches[2] == launches[3]  # the same configuration again
    assert [r.number for r in outcome.records] == list(range(5))
    assert not any(r.result.crash for r in outcome.records)
    study = load_study(Path(study_env["SLOGUARD_STUDY_DIR"]), outcome.study_name)
    infra = [t for t in study.get_trials() if INFRA_RECORD_ATTR in t.user_attrs]
    assert len(infra) == 1 and not has_result(infra[0]) and number_of(infra[0]) == 2
    assert infra[0].user_attrs[INFRA_ATTR].startswith("infra/port_in_use: OSError")
    # the study's optimizers see five results, not the failed launch
    assert [r.number for r in records(study)] == list(range(5))
    trials = mlflow_runs(study_env["MLFLOW_TRACKING_URI"], outcome.study_name)
    assert sorted(trials[trials["tags.sloguard.role"] == "trial"]["status"]) == ["FINISHED"] * 5


def test_infra_failures_on_every_launch_stop_the_study(compose, study_env) -> None:
    cfg = compose(*FAST, "budget=6", "optimizer=random", "study_name=blocked")
    with pytest.MonkeyPatch.context() as failing:
        launches = _failing_launches(failing, set(range(100)))
        with pytest.raises(StudyStopped, match=r"the last 4 launches failed .*already in use"):
            run_study(cfg)
    assert len(launches) == 4  # infra_retries=1: two configurations, each launched twice
    assert launches[0] == launches[1] and launches[2] == launches[3]
    runs = mlflow_runs(study_env["MLFLOW_TRACKING_URI"], "blocked")
    assert list(runs["status"]) == ["FAILED"]  # the study run, and no trial runs
    # the host is fixed: the same command continues where it stopped
    outcome = run_study(cfg)
    assert [r.number for r in outcome.records] == list(range(6))


def test_without_retries_two_failed_launches_stop_the_study(
    compose, study_env, monkeypatch
) -> None:
    launches = _failing_launches(monkeypatch, set(range(100)))
    with pytest.raises(StudyStopped, match=r"the last 2 launches"):
        run_study(compose(*FAST, "budget=3", "optimizer=random", "infra_retries=0"))
    assert len(launches) == 2


def test_infra_retries_must_be_a_count(compose) -> None:
    from sloguard.exceptions import ConfigError

    with pytest.raises(ConfigError, match=r"infra_retries=-1 is invalid"):
        compose("infra_retries=-1")
