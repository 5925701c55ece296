"""MLflow tracking: a study is a run, each trial a nested run.

Trial runs carry the launched knobs as params; percentiles, throughput, goodput, attainment,
utility and engine counters as metrics; crash category, optimizer, seed and phase as tags; the
trial record and the per-request table as artifacts. Everything goes through ``MlflowClient``
with explicit run ids, so nothing depends on MLflow's global active run (which Hydra multirun
and resumed studies would confuse).

``mlflow run`` exports ``MLFLOW_RUN_ID``: a single study logs into that run; under a Hydra
multirun each study becomes a child of it instead (see :func:`resolve_tracking_uri` and
:meth:`StudyTracker.start`).
"""

from __future__ import annotations

import math
import os
import time
from typing import TYPE_CHECKING, Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

if TYPE_CHECKING:
    from pathlib import Path

    from sloguard.trial_logger import TrialRecord

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
ROLE_TAG = "sloguard.role"
TRIAL_NUMBER_TAG = "sloguard.trial_number"
_BATCH = 100  # MLflow's limit of params per log_batch call


def resolve_tracking_uri(configured: str | None) -> str:
    """The config's URI, else $MLFLOW_TRACKING_URI, else ``sqlite:///mlflow.db``."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts into dotted keys (lists are kept as values)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def trial_metrics(record: TrialRecord) -> dict[str, float]:
    """The numbers a trial run carries (finite ones only)."""
    result = record.result
    values: dict[str, Any] = {
        **result.metrics,
        **result.server,
        "wall_s": record.wall_s,
        "feasible": float(result.feasible),
    }
    if result.utility is not None:
        values["utility"] = result.utility
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, (int, float)) and math.isfinite(float(v))
    }


def trial_tags(record: TrialRecord, common: dict[str, str]) -> dict[str, str]:
    """Tags of a trial run: crash category and cause, phase, feasibility, repairs."""
    crash = record.result.crash
    tags = {
        **common,
        ROLE_TAG: "trial",
        TRIAL_NUMBER_TAG: str(record.number),
        "phase": record.phase,
        "feasible": str(record.result.feasible).lower(),
        "crash_category": crash.category.value if crash else "none",
    }
    if crash:
        tags["crash_subcause"] = crash.subcause
        tags["crash_phase"] = crash.phase
        tags["crash_evidence"] = crash.evidence[:4000]
    if record.repairs:
        tags["repairs"] = "; ".join(record.repairs)[:4000]
    return tags


class StudyTracker:
    """Logs one study and its trials to MLflow.

    Args:
        client: An MLflow client bound to the tracking URI.
        run_id: The study run.
        experiment_id: Its experiment.
        common_tags: Tags every trial run repeats (optimizer, seed, ...).
    """

    def __init__(
        self, client: MlflowClient, run_id: str, experiment_id: str, common_tags: dict[str, str]
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.common_tags = common_tags

    @classmethod
    def start(
        cls,
        tracking_uri: str,
        experiment: str,
        study_name: str,
        *,
        common_tags: dict[str, str],
        resume_run_id: str | None = None,
        env_run_id: str | None = None,
        nest_under_env_run: bool = False,
    ) -> StudyTracker:
        """Open the study run: the resumed one, the one ``mlflow run`` made, or a new one.

        Args:
            tracking_uri: Where to log.
            experiment: Experiment name for a new run (ignored when the run already exists).
            study_name: The run name.
            common_tags: Tags for the study run and every trial run.
            resume_run_id: The study run recorded in a resumed trial log.
            env_run_id: ``MLFLOW_RUN_ID`` as ``mlflow run`` exported it.
            nest_under_env_run: Make a child of ``env_run_id`` (Hydra multirun) instead of
                logging into it.
        """
        client = MlflowClient(tracking_uri)
        for candidate in (resume_run_id, None if nest_under_env_run else env_run_id):
            if candidate and _run_exists(client, candidate):
                run = client.get_run(candidate)
                client.update_run(candidate, status="RUNNING", name=study_name)
                tracker = cls(client, candidate, run.info.experiment_id, common_tags)
                tracker._set_tags({**common_tags, ROLE_TAG: "study"})
                return tracker
        tags = {**common_tags, ROLE_TAG: "study", MLFLOW_RUN_NAME: study_name}
        if nest_under_env_run and env_run_id and _run_exists(client, env_run_id):
            experiment_id = client.get_run(env_run_id).info.experiment_id
            tags[MLFLOW_PARENT_RUN_ID] = env_run_id
        else:
            experiment_id = _experiment_id(client, experiment)
        run = client.create_run(experiment_id, run_name=study_name, tags=tags)
        return cls(client, run.info.run_id, experiment_id, common_tags)

    def log_study_config(self, config: dict[str, Any], config_yaml: str) -> None:
        """Log the resolved config as params (dotted keys) and as ``config.yaml``."""
        existing = self.client.get_run(self.run_id).data.params
        params = {k: _param_value(v) for k, v in flatten(config).items()}
        params = {k: v for k, v in params.items() if k not in existing}
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + _BATCH])
        self.client.log_text(self.run_id, config_yaml, "config.yaml")

    def logged_trials(self) -> set[int]:
        """Trial numbers that already have a nested run under this study."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.{MLFLOW_PARENT_RUN_ID} = '{self.run_id}'",
            max_results=50000,
        )
        return {
            int(r.data.tags[TRIAL_NUMBER_TAG]) for r in runs if TRIAL_NUMBER_TAG in r.data.tags
        }

    def log_trial(self, record: TrialRecord, requests_csv: Path | None = None) -> str:
        """Create the trial's nested run with params, metrics, tags and artifacts."""
        tags = {**trial_tags(record, self.common_tags), MLFLOW_PARENT_RUN_ID: self.run_id}
        run = self.client.create_run(
            self.experiment_id, run_name=f"trial-{record.number:03d}", tags=tags
        )
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, v, now, 0) for k, v in trial_metrics(record).items()],
            params=[Param(k, _param_value(v)) for k, v in record.result.config.items()],
        )
        self.client.log_dict(run_id, record.to_dict(), "trial.json")
        if requests_csv is not None and requests_csv.exists():
            self.client.log_text(run_id, requests_csv.read_text(encoding="utf-8"), "requests.csv")
        server_log = record.result.server_log
        if server_log and os.path.exists(server_log):
            self.client.log_artifact(run_id, server_log, "server")
        self.client.set_terminated(run_id, "FAILED" if record.result.crash else "FINISHED")
        return run_id

    def log_progress(
        self,
        number: int,
        best_utility: float | None,
        crashes: int,
        feasible: int,
        objective: str = "goodput_tok_s",
    ) -> None:
        """Study-level curves, one point per trial (step = trial number).

        The best utility is logged as ``best_<objective>`` (goodput, or capacity in req/s).
        """
        now = int(time.time() * 1000)
        metrics = [
            Metric("crashes", crashes, now, number),
            Metric("feasible_trials", feasible, now, number),
        ]
        if best_utility is not None:
            metrics.append(Metric(f"best_{objective}", best_utility, now, number))
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, summary: dict[str, Any], trial_log: Path, status: str = "FINISHED") -> None:
        """Record the best trial and the study summary, attach the trial log, close the run."""
        tags = {f"best.{k}": _param_value(v) for k, v in summary.pop("best_config", {}).items()}
        self._set_tags(tags)
        now = int(time.time() * 1000)
        metrics = [
            Metric(k, float(v), now, 0)
            for k, v in summary.items()
            if isinstance(v, (int, float)) and math.isfinite(float(v))
        ]
        self.client.log_batch(self.run_id, metrics=metrics)
        self.client.log_artifact(self.run_id, str(trial_log))
        self.client.set_terminated(self.run_id, status)

    def abort(self, status: str = "KILLED") -> None:
        """Close the study run after an interruption (the trial log keeps what finished)."""
        self.client.set_terminated(self.run_id, status)

    def _set_tags(self, tags: dict[str, str]) -> None:
        if tags:
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])


def _run_exists(client: MlflowClient, run_id: str) -> bool:
    try:
        return client.get_run(run_id).info.lifecycle_stage == "active"
    except Exception:  # noqa: BLE001 - MLflow raises several types for a missing run
        return False


def _experiment_id(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name)


def _param_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)[:6000]
