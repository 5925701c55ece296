"""MLflow tracking: a study is a run, each trial a nested run.

Trial runs carry the launched knobs as params; percentiles, throughput, goodput, attainment,
utility and engine counters as metrics; crash category, optimizer, seed and phase as tags; the
trial record and the per-request table as artifacts. Everything goes through ``MlflowClient``
with explicit run ids, so nothing depends on MLflow's global active run (which Hydra multirun,
resumed studies and several workers would confuse).

Logging is idempotent: a trial's metrics carry the time its trial finished, so logging the same
trial again (completing a half-logged run) adds nothing twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from sloguard.config import flatten
from sloguard.exceptions import ConfigError
from sloguard.redaction import mask
from sloguard.tracking import names

if TYPE_CHECKING:
    from pathlib import Path

    from sloguard.result import TrialRecord

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
EXPERIMENT_DESCRIPTION = f"""SLO-Guard tuning studies.

- Each top-level run is one **study** (an optimizer and a seed on a model, hardware, workload and
  SLO); its nested runs are the **trials**, one served configuration each.
- Study runs: `{names.best(names.GOODPUT)}` and `{names.FEASIBLE_TRIALS}` per trial (step = trial
  number), the best configuration as `{names.BEST_PREFIX}*` tags, `{names.BEST_PREFIX}vllm_serve`
  (the `vllm serve` line) and `best_config.yaml`.
- Trial runs: the knobs as params; `{names.GOODPUT}`, `ttft_p99_ms`, `itl_p99_ms` and
  `{names.UTILITY}` as metrics; `{names.CRASH_CATEGORY}` and `{names.FEASIBLE}` as tags.
- Paired-seed statistics: `sloguard report --comparison NAME`; best configurations:
  `sloguard best --study NAME`."""
_BATCH = 100  # MLflow's limit of params per log_batch call
_METRIC_BATCH = 1000  # MLflow's limit of metrics per log_batch call
_DUPLICATE_RETRIES = 3


def resolve_tracking_uri(configured: str | None) -> str:
    """The config's URI, else $MLFLOW_TRACKING_URI, else ``sqlite:///mlflow.db``."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


@contextlib.contextmanager
def sqlite_setup_lock(uri: str) -> Iterator[None]:
    """Serialise the first opening of a sqlite database across processes of this machine.

    MLflow and Optuna create their tables when they first open a database; two processes doing
    that at once on a fresh file race (``table alembic_version already exists``).
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    folder = os.path.dirname(os.path.abspath(_sqlite_path(uri)))
    fd = os.open(folder, os.O_RDONLY)  # the database's folder is the lock: no file left behind
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def check_tracking_uri(configured: str | None) -> None:
    """A local store's folder must exist and be writable (checked before anything is written).

    Raises:
        ConfigError: Naming the URI and the folder.
    """
    uri = resolve_tracking_uri(configured)
    if uri.startswith("sqlite:///"):
        folder = os.path.dirname(os.path.abspath(_sqlite_path(uri)))
    elif uri.startswith("file:") or "://" not in uri:  # a file store: MLflow makes its folder
        root = os.path.abspath(uri.removeprefix("file://").removeprefix("file:"))
        folder = root if os.path.isdir(root) else os.path.dirname(root)
    else:
        return  # a tracking server: reached when the study opens
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(
            f"tracking.uri={mask(uri)!r} is not usable: folder {folder!r} does not exist or is "
            "not writable; create it or point tracking.uri (or MLFLOW_TRACKING_URI) elsewhere"
        )


def _sqlite_path(uri: str) -> str:
    return uri[len("sqlite:///") :].split("?")[0]


def mlflow_client(tracking_uri: str) -> MlflowClient:
    """A client for ``tracking_uri`` (its store set up once, even by racing processes)."""
    with sqlite_setup_lock(tracking_uri):
        return MlflowClient(tracking_uri)


def trial_metrics(record: TrialRecord) -> dict[str, float]:
    """The numbers a trial run carries (finite ones only)."""
    result = record.result
    values: dict[str, Any] = {
        **result.metrics,
        **result.server,
        "wall_s": record.wall_s,
        names.FEASIBLE: float(result.feasible),
        names.ABORTED_EARLY: float(result.aborted_early is not None),
    }
    if result.utility is not None:
        values[names.UTILITY] = result.utility
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, (int, float)) and math.isfinite(float(v))
    }


def trial_tags(record: TrialRecord, common: dict[str, str]) -> dict[str, str]:
    """Tags of a trial run: crash category and cause, phase, feasibility, repairs."""
    result = record.result
    crash = result.crash
    tags = {
        **common,
        names.ROLE: names.TRIAL_ROLE,
        names.TRIAL_NUMBER: str(record.number),
        names.PHASE: record.phase,
        names.FEASIBLE: str(result.feasible).lower(),
        names.CRASH_CATEGORY: crash.category.value if crash else "none",
    }
    if crash:
        tags[names.CRASH_SUBCAUSE] = crash.subcause
        tags[names.CRASH_PHASE] = crash.phase
        tags[names.CRASH_EVIDENCE] = crash.evidence[:4000]
    if result.aborted_early:
        tags[names.ABORT_REASON] = result.aborted_early[:4000]
    if record.repairs:
        tags[names.REPAIRS] = "; ".join(record.repairs)[:4000]
    return tags


@dataclass(frozen=True)
class TrialRun:
    """A trial's nested run as MLflow has it."""

    number: int
    run_id: str
    status: str


@dataclass(frozen=True)
class ProgressPoint:
    """The study's curves after trial ``step``: best utility so far, crashes, feasible trials."""

    step: int
    best_utility: float | None
    crashes: int
    feasible: int
    timestamp_ms: int


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
            resume_run_id: The study run recorded in the study's storage.
            env_run_id: ``MLFLOW_RUN_ID`` as ``mlflow run`` exported it.
            nest_under_env_run: Make a child of ``env_run_id`` (Hydra multirun) instead of
                logging into it.
        """
        client = mlflow_client(tracking_uri)
        for candidate in (resume_run_id, None if nest_under_env_run else env_run_id):
            if candidate and _run_exists(client, candidate):
                run = client.get_run(candidate)
                client.update_run(candidate, status="RUNNING", name=study_name)
                _describe_experiment(client, run.info.experiment_id)
                tracker = cls(client, candidate, run.info.experiment_id, common_tags)
                tracker.set_tags({**common_tags, names.ROLE: names.STUDY_ROLE})
                return tracker
        # MLflow's own context (source, user, git commit) as its fluent API records it
        tags = resolve_tags(
            {**common_tags, names.ROLE: names.STUDY_ROLE, MLFLOW_RUN_NAME: study_name}
        )
        if nest_under_env_run and env_run_id and _run_exists(client, env_run_id):
            experiment_id = client.get_run(env_run_id).info.experiment_id
            tags[names.PARENT_RUN] = env_run_id
        else:
            experiment_id = _experiment_id(client, experiment)
        _describe_experiment(client, experiment_id)
        run = client.create_run(experiment_id, run_name=study_name, tags=tags)
        return cls(client, run.info.run_id, experiment_id, common_tags)

    @classmethod
    def attach(
        cls, tracking_uri: str, run_id: str, common_tags: dict[str, str] | None = None
    ) -> StudyTracker:
        """The tracker of an existing study run.

        Args:
            tracking_uri: Where the run is.
            run_id: The study run.
            common_tags: Tags for its trial runs; default: the study run's own (those that are
                not MLflow's or the role).

        Raises:
            LookupError: ``tracking_uri`` has no such run.
        """
        client = mlflow_client(tracking_uri)
        if not _run_exists(client, run_id):
            raise LookupError(f"MLflow at {tracking_uri!r} has no run {run_id}")
        run = client.get_run(run_id)
        if common_tags is None:
            common_tags = {
                k: v
                for k, v in run.data.tags.items()
                if not k.startswith(("mlflow.", names.BEST_PREFIX)) and k != names.ROLE
            }
        return cls(client, run_id, run.info.experiment_id, common_tags)

    def log_study_config(self, config: dict[str, Any], config_yaml: str) -> None:
        """Log the resolved config as params (dotted keys) and as ``config.yaml``."""
        existing = self.client.get_run(self.run_id).data.params
        params = {k: _param_value(v) for k, v in flatten(config).items()}
        params = {k: v for k, v in params.items() if k not in existing}
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + _BATCH])
        self.client.log_text(self.run_id, config_yaml, "config.yaml")

    def status(self) -> str:
        """The study run's status (RUNNING, FINISHED, FAILED, KILLED)."""
        return str(self.client.get_run(self.run_id).info.status)

    def set_status(self, status: str) -> None:
        """Set the study run's status (RUNNING while workers work, else terminated)."""
        if status == "RUNNING":
            self.client.update_run(self.run_id, status=status)
        else:
            self.client.set_terminated(self.run_id, status)

    def trial_runs(self) -> list[TrialRun]:
        """The nested trial runs under this study run."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.{names.PARENT_RUN} = '{self.run_id}'",
            max_results=50000,
        )
        return [
            TrialRun(int(r.data.tags[names.TRIAL_NUMBER]), r.info.run_id, r.info.status)
            for r in runs
            if names.TRIAL_NUMBER in r.data.tags
        ]

    def log_trial(
        self,
        record: TrialRecord,
        requests_csv: Path | None = None,
        *,
        run_id: str | None = None,
        finished_ms: int | None = None,
        extra_tags: dict[str, str] | None = None,
    ) -> str:
        """Log a finished trial to a new nested run, or complete ``run_id`` (half-logged).

        Args:
            record: The trial.
            requests_csv: Its per-request table, if this machine has it.
            run_id: An existing run of this trial to complete instead of creating one.
            finished_ms: When the trial finished (the metrics' timestamp); default now.
            extra_tags: More tags for the trial run.
        """
        tags = {
            **trial_tags(record, self.common_tags),
            **(extra_tags or {}),
            names.PARENT_RUN: self.run_id,
        }
        if run_id is None:
            run_id = self.client.create_run(
                self.experiment_id, run_name=f"trial-{record.number:03d}", tags=tags
            ).info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
            self.set_tags(tags, run_id)
        stamp = int(time.time() * 1000) if finished_ms is None else finished_ms
        logged = self.client.get_run(run_id).data.params
        params = {k: _param_value(v) for k, v in record.result.config.items()}
        self.client.log_batch(
            run_id, params=[Param(k, v) for k, v in params.items() if k not in logged]
        )
        self._log_metrics(
            run_id, [Metric(k, v, stamp, 0) for k, v in trial_metrics(record).items()]
        )
        self.client.log_dict(run_id, record.to_dict(), "trial.json")
        if requests_csv is not None and requests_csv.exists():
            self.client.log_text(run_id, requests_csv.read_text(encoding="utf-8"), "requests.csv")
        server_log = record.result.server_log
        if server_log and os.path.exists(server_log):
            self.client.log_artifact(run_id, server_log, "server")
        self.client.set_terminated(run_id, "FAILED" if record.result.crash else "FINISHED")
        return run_id

    def delete_run(self, run_id: str) -> None:
        """Delete a nested run (a duplicate of a trial that has another)."""
        self.client.delete_run(run_id)

    def progress_steps(self) -> set[int]:
        """Trial numbers whose point of the study curves is logged."""
        history = self.client.get_metric_history(self.run_id, names.FEASIBLE_TRIALS)
        return {m.step for m in history}

    def log_progress(self, points: list[ProgressPoint], objective: str) -> None:
        """Study-level curves, one point per trial (step = trial number).

        The best utility is logged as ``best_<objective>`` (goodput; capacity, per GPU, or the
        target rate over the GPUs it takes, in req/s).
        """
        metrics = []
        for p in points:
            metrics += [
                Metric(names.CRASHES, p.crashes, p.timestamp_ms, p.step),
                Metric(names.FEASIBLE_TRIALS, p.feasible, p.timestamp_ms, p.step),
            ]
            if p.best_utility is not None:
                metrics.append(
                    Metric(names.best(objective), p.best_utility, p.timestamp_ms, p.step)
                )
        self._log_metrics(self.run_id, metrics)

    def finish(
        self,
        summary: dict[str, Any],
        artifacts: list[Path],
        *,
        step: int,
        timestamp_ms: int,
        status: str = "FINISHED",
    ) -> None:
        """Record the best trial and the study summary, attach ``artifacts``, close the run.

        The summary is logged at the last trial's step, so the curves it shares names with end
        on it instead of jumping back to step 0.
        """
        best_config = summary.get("best_config", {})
        self.set_tags({f"{names.BEST_PREFIX}{k}": _param_value(v) for k, v in best_config.items()})
        metrics = [
            Metric(k, float(v), timestamp_ms, step)
            for k, v in summary.items()
            if isinstance(v, (int, float)) and math.isfinite(float(v))
        ]
        self._log_metrics(self.run_id, metrics)
        for path in artifacts:
            self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, status)

    def _log_metrics(self, run_id: str, metrics: list[Metric]) -> None:
        """Log metrics in batches; points another process logged at the same moment are kept once.

        Two workers finishing one study log the same summary points (same key, step, time and
        value). MLflow's store skips exact duplicates when an insert collides, but one committed
        by another process during that recovery fails the call; the retry then skips it too.
        """
        for i in range(0, len(metrics), _METRIC_BATCH):
            batch = metrics[i : i + _METRIC_BATCH]
            for attempt in range(_DUPLICATE_RETRIES):
                try:
                    self.client.log_batch(run_id, metrics=batch)
                    break
                except MlflowException:
                    if attempt == _DUPLICATE_RETRIES - 1:
                        raise
                    time.sleep(0.05 * (attempt + 1))

    def set_tags(self, tags: dict[str, str], run_id: str | None = None) -> None:
        """Set tags on the study run (or on ``run_id``)."""
        if tags:
            self.client.log_batch(
                run_id or self.run_id, tags=[RunTag(k, v) for k, v in tags.items()]
            )


def is_terminated(status: str) -> bool:
    """Whether an MLflow run status is final."""
    return RunStatus.is_terminated(RunStatus.from_string(status))


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


def _describe_experiment(client: MlflowClient, experiment_id: str) -> None:
    """Open the experiment in MLflow's classic runs view, with a description; a user's own
    description or kind is kept."""
    tags = client.get_experiment(experiment_id).tags
    wanted = {
        names.EXPERIMENT_KIND: "custom_model_development",
        names.PRIMARY_METRIC: names.best(names.GOODPUT),
        names.NOTE: EXPERIMENT_DESCRIPTION,
    }
    for key, value in wanted.items():
        if key not in tags:
            client.set_experiment_tag(experiment_id, key, value)


def _param_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)[:6000]
