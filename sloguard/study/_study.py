"""Open a study: create it, join it (another worker, another machine) or resume it.

The study's identity is its name in its storage; what it measures is its configuration hash.
A command with the same name and another configuration is refused, naming what differs. The
first process to create the study (Optuna's create is atomic) sets it up: its configuration,
its MLflow study run and one waiting trial per number up to the budget; every other process
waits until it is ready and joins. A larger budget extends the study. Bad input fails before
anything is written.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from mlflow.tracking.default_experiment import DEFAULT_EXPERIMENT_ID
from omegaconf import OmegaConf
from optuna.exceptions import DuplicatedStudyError
from optuna.trial import TrialState

from sloguard.config import check_study_name, flatten, schema_defaults, to_container
from sloguard.exceptions import ConfigError
from sloguard.redaction import mask, redact_config
from sloguard.study import _liveness
from sloguard.study._storage import StorageSpec, iter_journal_studies
from sloguard.study._trials import Slots, enqueue_numbers, requeue
from sloguard.tracking import StudyTracker, mlflow_client, names, resolve_tracking_uri

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

# config keys that do not change what a study measures (a join or resume may change them)
NOT_HASHED = (
    "budget",
    "resume",
    "study_name",
    "study_dir",
    "progress",
    "tracking",
    "knobs",
    "comparison",
    "storage",
    "workers",
    "allow_large",
    "heartbeat_interval",
    "grace_period",
    "infra_retries",
    "backend.startup_sleep_s",
    "backend.startup_stall_s",
    "backend.startup_max_s",
)
# study user attributes
CONFIG_HASH_ATTR = "sloguard:config_hash"
CONFIG_ATTR = "sloguard:config"
BUDGET_ATTR = "sloguard:budget"
CREATED_ATTR = "sloguard:created"
CREATOR_ATTR = "sloguard:creator"
RUN_ATTR = "sloguard:mlflow_run_id"
STOPPED_ATTR = "sloguard:stopped"  # why the workers stopped the study (cleared by the next run)
TRACKING_ATTR = "sloguard:tracking_uri"
READY_ATTR = "sloguard:ready"
_READY_WAIT_S = 120.0


def hashed_config(cfg: DictConfig) -> dict[str, Any]:
    """What decides a study's measurements (secrets as digests: comparable, not readable)."""
    data = to_container(cfg)
    for key in NOT_HASHED:
        *parents, leaf = key.split(".")
        node = data
        for parent in parents:
            node = node.get(parent, {})
        node.pop(leaf, None)
    return redact_config(data, replace=_digest)


def _digest(value: Any) -> str:
    return "sha256:" + hashlib.sha256(str(value).encode()).hexdigest()[:12]


def config_hash(cfg: DictConfig) -> str:
    """Hash of everything that decides what a study measures (budget and bookkeeping excluded)."""
    return hashlib.sha256(json.dumps(hashed_config(cfg), sort_keys=True).encode()).hexdigest()[:16]


def config_diff(stored: dict[str, Any], current: dict[str, Any]) -> str:
    """The dotted keys in which two hashed configurations differ (the first five)."""
    keys = _differences(stored, current)
    return ", ".join(keys[:5]) + (" ..." if len(keys) > 5 else "") if keys else "unknown"


def same_config(attrs: dict[str, Any], cfg: DictConfig, digest: str) -> bool:
    """Whether a study with user attributes ``attrs`` measures what ``cfg`` does.

    A study stored by an earlier version lacks the keys added since; each counts as the same
    when ``cfg`` leaves it at its schema default (the earlier version behaved so), so an
    upgrade does not orphan a study in progress.
    """
    if attrs.get(CONFIG_HASH_ATTR) == digest:
        return True
    stored = attrs.get(CONFIG_ATTR)
    return stored is not None and not _differences(stored, hashed_config(cfg))


def _differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    now, old, defaults = flatten(current), flatten(stored), schema_defaults()
    return sorted(
        k
        for k in now.keys() | old.keys()
        if now.get(k) != old.get(k)
        and not (k not in old and k in defaults and now[k] == defaults[k])
    )


@dataclass
class StudyHandle:
    """An open study: its name, folder, storage, Optuna study and MLflow tracker.

    Args:
        name: The study name.
        directory: Its folder on this machine (default journal, per-request tables, logs).
        spec: Its storage as configured.
        storage: The open storage.
        study: The Optuna study.
        tracker: Its MLflow study run.
        objective: The study curve's metric (``goodput_tok_s``, ``capacity_rps``,
            ``capacity_per_gpu_rps`` or ``target_per_gpu_rps``).
        grace_period: Seconds without a heartbeat after which a trial is dead.
    """

    name: str
    directory: Path
    spec: StorageSpec
    storage: BaseStorage
    study: optuna.Study
    tracker: StudyTracker
    objective: str
    grace_period: int

    def trials(self) -> list[FrozenTrial]:
        """Every trial in the storage now."""
        return self.study.get_trials(deepcopy=False)

    def stopped(self) -> str | None:
        """Why a worker stopped the study (failures that are not the configurations' fault)."""
        return self.study.user_attrs.get(STOPPED_ATTR) or None

    def budget(self) -> int:
        """The study's budget (another command may have extended it)."""
        return int(self.study.user_attrs[BUDGET_ATTR])

    def slots(self) -> Slots:
        """How many trial numbers are finished, running and waiting."""
        return Slots.of(self.trials(), self.budget())


def open_storage(cfg: DictConfig, directory: Path) -> BaseStorage:
    """Open the configured storage for the study in ``directory`` (heartbeats on)."""
    return StorageSpec(cfg.storage).open(
        directory,
        heartbeat_interval=cfg.heartbeat_interval,
        grace_period=cfg.grace_period,
        on_stale=requeue,
    )


def open_study(
    cfg: DictConfig, *, env_run_id: str | None = None, nest_under_env_run: bool = False
) -> StudyHandle:
    """Create, join or resume the study ``cfg`` names (see the module docstring).

    Raises:
        ConfigError: A bad storage or tracking URI, a bad study name, or a study of that name
            with another configuration; nothing has been written then.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = StorageSpec(cfg.storage)
    digest = config_hash(cfg)
    name = cfg.study_name or (cfg.resume and _find_resumable(cfg, spec, digest)) or None
    name = name or _new_name(cfg, digest)
    check_study_name(name)
    directory = Path(cfg.study_dir) / name
    storage = open_storage(cfg, directory) if spec.exists(directory) else None
    study = _load(storage, name) if storage is not None else None
    if study is not None:
        _check_same_config(study, name, cfg, digest)
    tracking_uri = resolve_tracking_uri(cfg.tracking.uri)
    try:
        mlflow_client(tracking_uri)
    except Exception as e:  # noqa: BLE001 - MLflow raises many types for a bad store
        raise ConfigError(f"tracking.uri={mask(tracking_uri)!r} cannot be opened: {e}") from None
    # nothing was written up to here
    created = False
    if study is None:
        directory.mkdir(parents=True, exist_ok=True)
        storage = storage or open_storage(cfg, directory)
        try:
            study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
            created = True
        except DuplicatedStudyError:
            study = optuna.load_study(study_name=name, storage=storage)
    assert storage is not None
    common = _common_tags(cfg, name, digest, spec.describe(directory))
    if created:
        try:
            tracker = _set_up(
                study, cfg, digest, tracking_uri, common, env_run_id, nest_under_env_run
            )
        except BaseException:
            optuna.delete_study(study_name=name, storage=storage)
            raise
    else:
        _wait_ready(study, name)
        _check_same_config(study, name, cfg, digest)
        tracker = _rejoin(study, cfg, tracking_uri, common, env_run_id, nest_under_env_run)
        _extend(study, cfg.budget)
    return _handle(cfg, name, spec, storage, study, tracker)


def attach_study(cfg: DictConfig, name: str) -> StudyHandle:
    """The handle of a study that is set up (a worker process joining it)."""
    spec = StorageSpec(cfg.storage)
    storage = open_storage(cfg, Path(cfg.study_dir) / name)
    study = optuna.load_study(study_name=name, storage=storage)
    tracker = StudyTracker.attach(
        resolve_tracking_uri(cfg.tracking.uri),
        study.user_attrs[RUN_ATTR],
        _common_tags(cfg, name, config_hash(cfg), spec.describe(Path(cfg.study_dir) / name)),
    )
    return _handle(cfg, name, spec, storage, study, tracker)


def _handle(
    cfg: DictConfig,
    name: str,
    spec: StorageSpec,
    storage: BaseStorage,
    study: optuna.Study,
    tracker: StudyTracker,
) -> StudyHandle:
    return StudyHandle(
        name=name,
        directory=Path(cfg.study_dir) / name,
        spec=spec,
        storage=storage,
        study=study,
        tracker=tracker,
        objective=names.objective_metric(cfg.objective),
        grace_period=cfg.grace_period,
    )


def _set_up(
    study: optuna.Study,
    cfg: DictConfig,
    digest: str,
    tracking_uri: str,
    common: dict[str, str],
    env_run_id: str | None,
    nest_under_env_run: bool,
) -> StudyTracker:
    """First process: configuration, MLflow run, one waiting trial per number, then ready."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["utility"])
    for key, value in {
        CONFIG_HASH_ATTR: digest,
        CONFIG_ATTR: hashed_config(cfg),
        CREATED_ATTR: time.time(),
        CREATOR_ATTR: _liveness.identity(),
        BUDGET_ATTR: cfg.budget,
    }.items():
        study.set_user_attr(key, value)
    tracker = _new_study_run(study, cfg, tracking_uri, common, env_run_id, nest_under_env_run)
    enqueue_numbers(study, range(cfg.budget))
    study.set_user_attr(READY_ATTR, True)
    return tracker


def _rejoin(
    study: optuna.Study,
    cfg: DictConfig,
    tracking_uri: str,
    common: dict[str, str],
    env_run_id: str | None,
    nest_under_env_run: bool,
) -> StudyTracker:
    """The study run of a study that exists: the stored one, else a new one (MLflow lost it)."""
    run_id = study.user_attrs[RUN_ATTR]
    try:
        return StudyTracker.attach(tracking_uri, run_id, common)
    except LookupError:
        pass
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if running:
        raise ConfigError(
            f"tracking.uri={mask(tracking_uri)!r} has no run {run_id}, where study "
            f"{study.study_name!r} is mirrored (tracking URI "
            f"{study.user_attrs.get(TRACKING_ATTR)!r}) while its workers run; use that tracking "
            "URI"
        )
    print(f"sloguard: study {study.study_name}: MLflow run {run_id} is gone; mirroring anew")
    return _new_study_run(study, cfg, tracking_uri, common, env_run_id, nest_under_env_run)


def _new_study_run(
    study: optuna.Study,
    cfg: DictConfig,
    tracking_uri: str,
    common: dict[str, str],
    env_run_id: str | None,
    nest_under_env_run: bool,
) -> StudyTracker:
    """Start the study's MLflow run, log its configuration, and record the run in the study."""
    tracker = StudyTracker.start(
        tracking_uri,
        cfg.tracking.experiment,
        study.study_name,
        common_tags=common,
        env_run_id=env_run_id,
        nest_under_env_run=nest_under_env_run,
    )
    if tracker.experiment_id == DEFAULT_EXPERIMENT_ID and cfg.tracking.experiment != "Default":
        print(
            f"sloguard: note: `mlflow run` made this study's run in MLflow's Default experiment, "
            f"not {cfg.tracking.experiment!r}: give it --experiment-name "
            f"{cfg.tracking.experiment} (sloguard report and best search every experiment)",
            file=sys.stderr,
        )
    shown = redact_config(to_container(cfg))
    tracker.log_study_config(shown, OmegaConf.to_yaml(OmegaConf.create(shown)))
    study.set_user_attr(RUN_ATTR, tracker.run_id)
    study.set_user_attr(TRACKING_ATTR, mask(tracking_uri))
    return tracker


def _extend(study: optuna.Study, budget: int) -> None:
    """Queue the numbers a larger budget adds."""
    stored = int(study.user_attrs[BUDGET_ATTR])
    if budget > stored:
        study.set_user_attr(BUDGET_ATTR, budget)
        enqueue_numbers(study, range(stored, budget))


def _load(storage: BaseStorage, name: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def _wait_ready(study: optuna.Study, name: str) -> None:
    """Wait while the process that created the study sets it up."""
    deadline = time.monotonic() + _READY_WAIT_S
    while not study.user_attrs.get(READY_ATTR):
        creator = study.user_attrs.get(CREATOR_ATTR)
        if time.monotonic() > deadline or (creator and _liveness.is_alive(creator) is False):
            raise ConfigError(
                f"study_name={name!r} exists but was never set up (its creator stopped "
                "first); choose another study_name"
            )
        time.sleep(0.2)


def _check_same_config(study: optuna.Study, name: str, cfg: DictConfig, digest: str) -> None:
    attrs = study.user_attrs
    if CONFIG_HASH_ATTR not in attrs:
        if attrs.get(READY_ATTR) is None and CREATOR_ATTR not in attrs:
            return  # being created right now; checked again once ready
        raise ConfigError(f"study_name={name!r} is not a SLO-Guard study; choose another name")
    if not same_config(attrs, cfg, digest):
        raise ConfigError(
            f"study_name={name!r} was run with another configuration (differs in: "
            f"{config_diff(attrs.get(CONFIG_ATTR, {}), hashed_config(cfg))}); choose another "
            "study_name or run it with its own configuration"
        )


def _find_resumable(cfg: DictConfig, spec: StorageSpec, digest: str) -> str | None:
    """The newest study of this configuration in the storage (or under ``study_dir``)."""
    candidates: list[tuple[float, str]] = []
    if spec.shared:
        storages = [open_storage(cfg, Path(cfg.study_dir))]
    else:
        storages = [
            open_storage(cfg, directory)
            for directory, _ in iter_journal_studies(Path(cfg.study_dir))
        ]
    for storage in storages:
        for frozen in storage.get_all_studies():
            if same_config(frozen.user_attrs, cfg, digest):
                candidates.append((frozen.user_attrs.get(CREATED_ATTR, 0.0), frozen.study_name))
    return max(candidates)[1] if candidates else None


def _new_name(cfg: DictConfig, digest: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{cfg.optimizer.name}-seed{cfg.seed}-{stamp}-{digest[:6]}"


def _common_tags(cfg: DictConfig, name: str, digest: str, storage: str) -> dict[str, str]:
    tags = {
        names.OPTIMIZER: cfg.optimizer.name,
        names.SEED: str(cfg.seed),
        names.BACKEND: cfg.backend.name,
        names.MODEL: cfg.model.name,
        names.HARDWARE: cfg.hardware.name,
        names.WORKLOAD: cfg.workload.name,
        names.SLO: cfg.slo.name,
        names.STUDY_NAME: name,
        names.CONFIG_HASH: digest,
        names.STORAGE: storage,
    }
    if cfg.comparison:
        tags[names.COMPARISON] = cfg.comparison
    return tags
