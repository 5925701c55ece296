"""Run a study: open it, reconcile MLflow, run its workers (here or in child processes), finish.

``workers=1`` runs the worker loop in this process; ``workers=N`` (or ``auto``: one per
``hardware.gpus_per_trial`` GPUs) starts N child processes, each with its own GPUs through
``CUDA_VISIBLE_DEVICES`` on a real backend, and shows their progress from the storage. The
same command on another machine, with the same ``storage=`` URL and ``study_name=``, joins.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from omegaconf import OmegaConf
from tqdm import tqdm

from sloguard import signals
from sloguard.backends import BACKENDS
from sloguard.config import to_container
from sloguard.deploy import SERVE_CONFIG, serve_command, serve_config
from sloguard.evaluation import TrialStep, slo_from_config
from sloguard.exceptions import NO_SPACE_ERRNOS, ConfigError, DiskFull, Interrupted
from sloguard.gpu_profile import visible_gpus
from sloguard.optimizer import BaseOptimizer, create_optimizer
from sloguard.prior import simulate_prior
from sloguard.space import SearchSpace
from sloguard.study import _liveness
from sloguard.study._mirror import MirrorReport, reconcile
from sloguard.study._proposer import Proposer
from sloguard.study._study import (
    CONFIG_ATTR,
    STOPPED_ATTR,
    StudyHandle,
    attach_study,
    open_study,
)
from sloguard.study._summary import best_trial, export_trials, study_records, summarize_study
from sloguard.study._trials import Slots, finished_at, finished_trials, reap_dead_trials
from sloguard.study._worker import StudyStopped, Worker, WorkerSettings
from sloguard.tracking import SERVE_TAG, names, resolve_tracking_uri

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from sloguard.result import TrialRecord

EXPORT_NAME = "trials.jsonl"


@dataclass
class StudyOutcome:
    """What a study holds after this command: its name, MLflow run and finished trials."""

    study_name: str
    run_id: str | None
    storage: str
    records: list[TrialRecord] = field(default_factory=list)
    skipped: bool = False

    @property
    def best(self) -> TrialRecord | None:
        return best_trial(self.records)


class StudyIncomplete(RuntimeError):
    """The workers stopped before the study held its budget (one line says why)."""


def plan_workers(cfg: DictConfig) -> list[str | None]:
    """``CUDA_VISIBLE_DEVICES`` of each worker (``None``: leave the environment as it is).

    Raises:
        ConfigError: More GPUs asked for than this machine has.
    """
    per_trial = cfg.hardware.gpus_per_trial
    gpus = visible_gpus() if cfg.backend.name != "sim" else []
    workers = cfg.workers
    if workers == "auto":
        workers = max(1, len(gpus) // per_trial) if gpus else 1
    if not gpus:
        return [None] * int(workers)
    if workers * per_trial > len(gpus):
        raise ConfigError(
            f"workers={workers} x hardware.gpus_per_trial={per_trial} needs "
            f"{workers * per_trial} GPUs; this machine has {len(gpus)} ({','.join(gpus)})"
        )
    return [",".join(gpus[i * per_trial : (i + 1) * per_trial]) for i in range(int(workers))]


def run_study(
    cfg: DictConfig, *, env_run_id: str | None = None, nest_under_env_run: bool = False
) -> StudyOutcome:
    """Run (or join, or resume) one study as configured and return its finished trials.

    Args:
        cfg: The composed, validated root configuration.
        env_run_id: ``MLFLOW_RUN_ID`` exported by ``mlflow run``, if any.
        nest_under_env_run: Under Hydra multirun, make the study a child of ``env_run_id``.

    Raises:
        ConfigError: Bad input (nothing written).
        StudyIncomplete: The workers stopped before the budget was reached.
        StudyStopped: Launches kept failing through no fault of their configurations.
    """
    devices = plan_workers(cfg)
    with signals.handled():
        with signals.deferred(hold=True):  # a study's setup is never cut in half
            handle = open_study(cfg, env_run_id=env_run_id, nest_under_env_run=nest_under_env_run)
        return _work(cfg, handle, devices)


def _work(cfg: DictConfig, handle: StudyHandle, devices: list[str | None]) -> StudyOutcome:
    """Run the study's trials here or in worker processes, then close or mark its run."""
    try:
        signals.raise_pending()  # one that came during the setup
        if handle.slots().complete:
            with signals.deferred():
                finish_study(handle)  # MLflow may still miss what a kill left out
            print(
                f"study {handle.name} is already complete ({handle.budget()} trials); "
                "nothing to run"
            )
            return _outcome(handle, skipped=True)
        with signals.deferred():
            reconcile_study(handle)
            if handle.stopped():  # an earlier command stopped it; this one tries again
                handle.study.set_user_attr(STOPPED_ATTR, "")
            handle.tracker.set_status("RUNNING")
        if len(devices) == 1 and devices[0] is None:
            _run_here(cfg, handle)
        else:
            _run_children(cfg, handle, devices)
    except KeyboardInterrupt as e:
        with signals.deferred():
            finish_study(handle)
        raise Interrupted(getattr(e, "signum", signal.SIGINT), handle.name) from None
    except OSError as e:
        if e.errno not in NO_SPACE_ERRNOS:
            raise
        with signals.deferred(), contextlib.suppress(OSError):
            finish_study(handle)  # MLflow may share the full disk; the next run reconciles
        full = DiskFull(e.errno, f"no space left writing {e.filename or 'the study'}")
        full.study = handle.name
        raise full from None
    except BaseException:
        with signals.deferred():
            finish_study(handle)
        raise
    with signals.deferred():
        finish_study(handle)
    if (why := handle.stopped()) is not None:
        raise StudyStopped(why)
    slots = handle.slots()
    if not slots.complete:
        raise StudyIncomplete(
            f"study {handle.name}: the workers stopped with {slots.finished} of "
            f"{slots.budget} trials finished; run the same command again to continue"
        )
    return _outcome(handle)


def make_worker(
    cfg: DictConfig,
    handle: StudyHandle,
    on_trial: Callable[[TrialRecord], None] | None = None,
) -> Worker:
    """A worker for ``handle`` with the study's optimizer, space and backend."""
    space = SearchSpace.from_config(cfg.space)
    step = TrialStep.from_config(
        cfg, space, slo_from_config(cfg), log_dir=handle.directory / "server-logs"
    )
    prior = simulate_prior(cfg)
    if prior is not None:
        print(prior.describe(), file=sys.stderr)

    def make_optimizer() -> BaseOptimizer:
        optimizer = create_optimizer(cfg.optimizer, space, cfg.seed, cfg.budget)
        return optimizer if prior is None else prior.warm_start(optimizer)

    proposer = Proposer(make_optimizer)
    settings = WorkerSettings(
        heartbeat_interval=cfg.heartbeat_interval,
        log_requests=cfg.tracking.log_requests,
        infra_retries=cfg.infra_retries,
    )
    return Worker(handle, step, proposer, settings, on_trial)


def reconcile_study(handle: StudyHandle) -> MirrorReport:
    """Fail dead workers' trials (queuing them again), then make MLflow equal the store."""
    reap_dead_trials(handle.study, handle.storage, handle.grace_period)
    return reconcile(
        handle.tracker, handle.trials(), handle.directory, handle.objective, handle.grace_period
    )


def finish_study(handle: StudyHandle) -> MirrorReport:
    """Reconcile; close the study run if it is complete (or if nobody works on it any more)."""
    report = reconcile_study(handle)
    trials = handle.trials()
    slots = Slots.of(trials, handle.budget())
    if slots.complete:
        handle.directory.mkdir(parents=True, exist_ok=True)
        export = export_trials(trials, handle.directory / EXPORT_NAME)
        records = study_records(trials)
        done = finished_trials(trials)
        summary = summarize_study(records)
        handle.tracker.finish(
            summary,
            [export, *_deploy_files(handle, summary.get("best_config"))],
            step=max(r.number for r in records),
            timestamp_ms=int(max(finished_at(t) for t in done) * 1000),
        )
    elif slots.running == 0:
        handle.tracker.set_status("FAILED" if handle.stopped() else "KILLED")
    return report


def _deploy_files(handle: StudyHandle, best: dict[str, Any] | None) -> list[Path]:
    """The best configuration as ``vllm serve`` reads it, beside the study's export."""
    if not best:
        return []
    path = handle.directory / SERVE_CONFIG
    path.write_text(serve_config(best))
    model = handle.study.user_attrs.get(CONFIG_ATTR, {}).get("model", {}).get("path", "MODEL")
    handle.tracker.set_tags({SERVE_TAG: serve_command(str(model), best)})
    return [path]


def _outcome(handle: StudyHandle, skipped: bool = False) -> StudyOutcome:
    return StudyOutcome(
        handle.name,
        handle.tracker.run_id,
        handle.spec.describe(handle.directory),
        study_records(handle.trials()),
        skipped,
    )


def _run_here(cfg: DictConfig, handle: StudyHandle) -> None:
    with _progress(cfg, handle) as bar:
        make_worker(cfg, handle, on_trial=lambda _: bar.refresh_from(handle)).run()


def _run_children(cfg: DictConfig, handle: StudyHandle, devices: list[str | None]) -> None:
    container = to_container(cfg)
    container["study_name"] = handle.name
    container["tracking"]["uri"] = resolve_tracking_uri(cfg.tracking.uri)
    # children fork from a server that imported SLO-Guard once (not once per child); they get
    # this process's environment and folder as they are now, as spawned children would
    context = multiprocessing.get_context("forkserver")
    backend_module = BACKENDS[cfg.backend.name].split(":")[0]
    context.set_forkserver_preload(
        [__name__, backend_module, "mlflow.store.tracking.sqlalchemy_store"]
    )
    where = (dict(os.environ), os.getcwd(), _liveness.identity())
    children = [
        context.Process(target=_child, args=(container, gpus, where), name=f"sloguard-worker-{i}")
        for i, gpus in enumerate(devices)
    ]
    for child in children:
        child.start()
    try:
        with _progress(cfg, handle) as bar:
            while any(child.is_alive() for child in children):
                bar.refresh_from(handle)
                time.sleep(0.5)
            bar.refresh_from(handle)
    except BaseException:
        with signals.deferred():  # a second Ctrl-C does not orphan a worker
            for child in children:
                if child.is_alive():
                    child.terminate()  # SIGTERM: the worker fails its trial as interrupted
            for child in children:
                child.join(timeout=60)
                if child.is_alive():
                    child.kill()
                    child.join()
        raise
    failed = [f"{c.name} (exit {c.exitcode})" for c in children if c.exitcode != 0]
    if failed:
        print(f"sloguard: study {handle.name}: {', '.join(failed)} stopped early", file=sys.stderr)


def _child(
    container: dict[str, Any],
    gpus: str | None,
    where: tuple[dict[str, str], str, dict[str, Any]],
) -> None:
    """A worker process: join the study and work (SIGTERM stops it cleanly).

    A worker whose command died first closes the study itself when it is complete.
    """
    environ, cwd, command = where
    os.environ.clear()
    os.environ.update(environ)
    os.chdir(cwd)
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    signals.install()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = OmegaConf.create(container)
    handle = attach_study(cfg, cfg.study_name)
    try:
        make_worker(cfg, handle).run()
    except KeyboardInterrupt as e:
        sys.exit(signals.exit_status(e))
    except StudyStopped:
        sys.exit(1)  # the command that started this worker says why
    except OSError as e:
        if e.errno not in NO_SPACE_ERRNOS:
            raise
        print(f"sloguard: worker {os.getpid()}: no space left: {e}", file=sys.stderr)
        sys.exit(1)
    if _liveness.is_alive(command) is False and handle.slots().complete:
        finish_study(handle)


class _Bar(tqdm):
    def refresh_from(self, handle: StudyHandle) -> None:
        records = study_records(handle.trials())
        self.n = len(records)
        best = best_trial(records)
        crashes = sum(1 for r in records if r.result.crash)
        if best is None:
            shown = "best goodput=-"
        elif names.GPUS_NEEDED in best.result.metrics:
            shown = f"fewest GPUs={best.result.metrics[names.GPUS_NEEDED]:.0f}"
        elif names.CAPACITY_PER_GPU in best.result.metrics:
            per = best.result.metrics[names.CAPACITY_PER_GPU]
            shown = f"best capacity={per:.3g} req/s per GPU"
        elif "capacity_rps" in best.result.metrics:
            shown = f"best capacity={best.result.metrics['capacity_rps']:.3g} req/s"
        else:
            shown = f"best goodput={best.result.metrics['goodput_tok_s']:.0f} tok/s"
        self.set_postfix_str(f"{shown}, crashes={crashes}")


@contextmanager
def _progress(cfg: DictConfig, handle: StudyHandle) -> Iterator[_Bar]:
    bar = _Bar(
        total=handle.budget(),
        disable=not cfg.progress,
        desc=f"{cfg.optimizer.name} seed={cfg.seed}",
        unit="trial",
        dynamic_ncols=True,
    )
    bar.refresh_from(handle)
    try:
        yield bar
    finally:
        bar.close()
