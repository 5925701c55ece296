"""The study loop: ask, repair, evaluate, log durably, track, tell; resumable at any point.

Order per trial: per-request table, then the fsync'ed trial log line, then MLflow. A study that
is killed resumes from its trial log (``resume=true``): finished trials are told to a fresh
optimizer, any trial missing from MLflow is logged there, and the loop continues at the next
trial number. Every random choice of trial ``n`` derives from ``(seed, n)``, so the resumed
study proposes and measures exactly what an uninterrupted one would have.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import OmegaConf
from tqdm import tqdm

from sloguard.backends import create_backend
from sloguard.backends.sim import zero_load_ttft_ms
from sloguard.capacity import CapacitySearch, search_capacity
from sloguard.config import ConfigError, to_container
from sloguard.gpu_profile import MemoryGuard, detect_vram_gb
from sloguard.metrics_collector import requests_table
from sloguard.optimizer import create_optimizer
from sloguard.slo_contract import SloContract
from sloguard.space import Repair, SearchSpace
from sloguard.tracking import StudyTracker, flatten, resolve_tracking_uri
from sloguard.trial_logger import LOG_NAME, TrialLog, TrialRecord
from sloguard.workload import Workload, build_workload

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from sloguard.backends import BaseBackend
    from sloguard.optimizer import BaseOptimizer
    from sloguard.request_class import RequestClasses
    from sloguard.result import RequestRecord

# config keys that do not change what a study measures (so a resume may change them)
_NOT_HASHED = (
    "budget",
    "resume",
    "study_name",
    "study_dir",
    "progress",
    "tracking",
    "knobs",
    "comparison",
)


@dataclass
class StudyOutcome:
    """What a study left: its name, run, log and trials."""

    study_name: str
    run_id: str | None
    log_path: Path
    records: list[TrialRecord] = field(default_factory=list)
    skipped: bool = False

    @property
    def best(self) -> TrialRecord | None:
        return best_trial(self.records)


def slo_from_config(cfg: DictConfig) -> SloContract:
    """The SloContract of the ``slo`` config group."""
    return SloContract(
        ttft_ms=cfg.slo.ttft_ms,
        itl_ms=cfg.slo.itl_ms,
        percentile=cfg.slo.percentile,
        e2el_ms=cfg.slo.e2el_ms,
        attainment_target=cfg.slo.attainment_target,
    )


def memory_guard(cfg: DictConfig, probe_device: bool = False) -> MemoryGuard:
    """The guard for this model and device; a real backend probes the device's memory."""
    vram, _ = (
        detect_vram_gb(cfg.hardware.vram_gb)
        if probe_device
        else (cfg.hardware.vram_gb, "hardware config")
    )
    return MemoryGuard.for_model(cfg.model, cfg.hardware, vram, overcommit=cfg.space.kv_overcommit)


def launch_config(
    space: SearchSpace, guard: MemoryGuard, params: dict[str, Any], max_position_embeddings: int
) -> Repair:
    """The configuration to launch for ``params``: completed, repaired, fitted to the KV cache.

    With ``space.repair`` off the completed config is launched as drawn.
    """
    repaired = space.repair(space.complete(params), max_position_embeddings)
    if not space.repair_enabled:
        return repaired
    low = space.knobs["gpu_memory_utilization"]
    guarded = guard.repair(
        repaired.config,
        util_high=low.high,  # type: ignore[union-attr]
        len_low=space.knobs["max_model_len"].low,
    )  # type: ignore[union-attr]
    return Repair(guarded.config, repaired.changes + guarded.changes)


@dataclass
class TrialStep:
    """One trial of a study: ask, fit the config for launch, evaluate. No logging, no telling.

    Args:
        space: The search space.
        guard: The memory guard.
        backend: Where configurations are evaluated.
        workload: The requests every trial serves.
        slo: The SLO contract.
        seed: The study seed (trial ``n`` evaluates with a seed derived from it).
        max_position_embeddings: The model's context limit.
    """

    space: SearchSpace
    guard: MemoryGuard
    backend: BaseBackend
    workload: Workload
    slo: SloContract
    seed: int
    max_position_embeddings: int
    log_dir: Path | None = None
    capacity: CapacitySearch | None = None

    @classmethod
    def from_config(
        cls, cfg: DictConfig, space: SearchSpace, slo: SloContract, log_dir: Path | None = None
    ) -> TrialStep:
        backend = create_backend(cfg)
        workload = workload_from_config(cfg)
        capacity = None
        if cfg.objective == "capacity":
            capacity = CapacitySearch.from_config(cfg, workload)
        return cls(
            space,
            memory_guard(cfg, probe_device=backend.probes_device),
            backend,
            workload,
            slo,
            cfg.seed,
            cfg.model.max_position_embeddings,
            log_dir,
            capacity,
        )

    def run(self, optimizer: BaseOptimizer, number: int) -> TrialRecord:
        """Ask ``optimizer`` for trial ``number`` and evaluate it."""
        phase = optimizer.phase
        return self.evaluate(optimizer.ask(), number, phase)

    def evaluate(self, params: dict[str, Any], number: int, phase: str = "") -> TrialRecord:
        """Fit ``params`` for launch and evaluate them as trial ``number``."""
        repair = launch_config(self.space, self.guard, params, self.max_position_embeddings)
        start = time.perf_counter()
        log_path = self.log_dir / f"trial-{number:03d}.log" if self.log_dir else None
        seed = trial_seed(self.seed, number)
        if self.capacity is None:
            result = self.backend.evaluate(
                repair.config, self.workload, self.slo, seed=seed, log_path=log_path
            )
        else:
            result = search_capacity(
                self.capacity,
                self.workload,
                lambda next_workload: self.backend.evaluate_adaptive(
                    repair.config, next_workload, self.slo, seed=seed, log_path=log_path
                ),
            )
        return TrialRecord(
            number, params, result, phase, list(repair.changes), time.perf_counter() - start
        )


def workload_from_config(cfg: DictConfig) -> Workload:
    """The study's requests; TTFT slowdown SLOs resolve against the hardware's zero-load TTFT."""
    return build_workload(
        cfg.workload, functools.partial(zero_load_ttft_ms, cfg.model, cfg.hardware)
    )


def config_hash(cfg: DictConfig) -> str:
    """Hash of everything that decides what a study measures (budget and bookkeeping excluded)."""
    data = {k: v for k, v in to_container(cfg).items() if k not in _NOT_HASHED}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def trial_seed(seed: int, number: int) -> int:
    """The backend seed of trial ``number``."""
    return int(np.random.default_rng([seed, number, 1]).integers(2**31 - 1))


def best_trial(records: list[TrialRecord]) -> TrialRecord | None:
    """The feasible trial with the highest utility (earliest on ties), or ``None``."""
    feasible = [r for r in records if r.result.feasible and r.result.utility is not None]
    return max(feasible, key=lambda r: (r.result.utility, -r.number), default=None)


def summarize_study(records: list[TrialRecord]) -> dict[str, Any]:
    """Study-level figures: best goodput and latency, crashes, crash waste, feasibility."""
    crashes = sum(1 for r in records if r.result.crash)
    best = best_trial(records)
    summary: dict[str, Any] = {
        "num_trials": len(records),
        "crashes": crashes,
        "crash_waste_pct": 100.0 * crashes / len(records) if records else 0.0,
        "feasible_trials": sum(1 for r in records if r.result.feasible),
    }
    if best is not None:
        summary.update(
            best_trial=best.number,
            best_goodput_tok_s=best.result.metrics["goodput_tok_s"],
            best_ttft_p99_ms=best.result.metrics.get("ttft_p99_ms", math.nan),
            best_itl_p99_ms=best.result.metrics.get("itl_p99_ms", math.nan),
            best_e2el_p50_ms=best.result.metrics.get("e2el_p50_ms", math.nan),
            best_attainment=best.result.metrics.get("attainment", math.nan),
            best_capacity_rps=best.result.metrics.get("capacity_rps", math.nan),
            best_config=best.result.config,
        )
    return summary


def open_study(cfg: DictConfig) -> tuple[str, TrialLog | None]:
    """Find the study to run: its name and existing log (``None`` when it starts fresh).

    Raises:
        ConfigError: ``study_name`` names a log of another config, or an existing log when
            ``resume`` is false.
    """
    root = Path(cfg.study_dir)
    digest = config_hash(cfg)
    if cfg.study_name:
        directory = root / cfg.study_name
        if not (directory / LOG_NAME).exists():
            return cfg.study_name, None
        log = TrialLog.open(directory)
        if not cfg.resume:
            raise ConfigError(
                f"study_name={cfg.study_name!r} already has {len(log.records)} trials in "
                f"{log.path}; pass resume=true to continue it or choose another study_name"
            )
        if log.header.get("config_hash") != digest:
            raise ConfigError(
                f"study_name={cfg.study_name!r} was run with another configuration "
                f"(differs in: {_config_diff(log.header.get('config', {}), cfg)}); "
                "choose another study_name"
            )
        return cfg.study_name, log
    if cfg.resume and root.is_dir():
        candidates = []
        for path in root.glob(f"*/{LOG_NAME}"):
            try:
                log = TrialLog.open(path.parent)
            except (ValueError, json.JSONDecodeError):
                continue
            if log.header.get("config_hash") == digest:
                candidates.append((log.header.get("created", 0.0), log))
        if candidates:
            log = max(candidates, key=lambda c: c[0])[1]
            return str(log.header["study_name"]), log
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{cfg.optimizer.name}-seed{cfg.seed}-{stamp}-{digest[:6]}"
    return name, None


def run_study(
    cfg: DictConfig, *, env_run_id: str | None = None, nest_under_env_run: bool = False
) -> StudyOutcome:
    """Run (or resume) one study as configured and return its trials.

    Args:
        cfg: The composed, validated root configuration.
        env_run_id: ``MLFLOW_RUN_ID`` exported by ``mlflow run``, if any.
        nest_under_env_run: Under Hydra multirun, make the study a child of ``env_run_id``.
    """
    space = SearchSpace.from_config(cfg.space)
    slo = slo_from_config(cfg)
    study_name, log = open_study(cfg)
    directory = Path(cfg.study_dir) / study_name
    if log is not None and len(log.records) >= cfg.budget:
        print(
            f"study {study_name} is already complete ({len(log.records)}/{cfg.budget} trials);"
            " nothing to run"
        )
        return StudyOutcome(
            study_name, log.header.get("mlflow_run_id"), log.path, log.records, skipped=True
        )

    container = to_container(cfg)
    common_tags = {
        "optimizer": cfg.optimizer.name,
        "seed": str(cfg.seed),
        "backend": cfg.backend.name,
        "model": cfg.model.name,
        "hardware": cfg.hardware.name,
        "workload": cfg.workload.name,
        "slo": cfg.slo.name,
        "study_name": study_name,
        "config_hash": config_hash(cfg),
    }
    if cfg.comparison:
        common_tags["comparison"] = cfg.comparison
    tracker = StudyTracker.start(
        resolve_tracking_uri(cfg.tracking.uri),
        cfg.tracking.experiment,
        study_name,
        common_tags=common_tags,
        resume_run_id=log.header.get("mlflow_run_id") if log else None,
        env_run_id=env_run_id,
        nest_under_env_run=nest_under_env_run,
    )
    if log is None:
        log = TrialLog.create(
            directory,
            {
                "study_name": study_name,
                "config_hash": config_hash(cfg),
                "config": container,
                "mlflow_run_id": tracker.run_id,
                "created": time.time(),
            },
        )
    tracker.log_study_config(container, OmegaConf.to_yaml(cfg, resolve=True))
    tracker.client.set_tag(tracker.run_id, "trial_log", str(log.path.resolve()))

    optimizer = create_optimizer(cfg.optimizer, space, cfg.seed, cfg.budget)
    for record in log.records:
        optimizer.tell(record.params, record.result)
    logged = tracker.logged_trials()
    for record in log.records:
        if record.number not in logged:
            tracker.log_trial(record, _requests_path(directory, record.number))

    trial = TrialStep.from_config(cfg, space, slo, log_dir=directory / "server-logs")
    crashes = sum(1 for r in log.records if r.result.crash)
    bar = tqdm(
        total=cfg.budget,
        initial=len(log.records),
        disable=not cfg.progress,
        desc=f"{cfg.optimizer.name} seed={cfg.seed}",
        unit="trial",
        dynamic_ncols=True,
    )
    _set_postfix(bar, log.records, crashes)
    try:
        for number in range(len(log.records), cfg.budget):
            record = trial.run(optimizer, number)
            result = record.result
            csv_path = None
            if cfg.tracking.log_requests and result.requests:
                csv_path = _write_requests(
                    directory, number, result.requests, slo, trial.workload.classes
                )
            log.append(record)
            tracker.log_trial(record, csv_path)
            optimizer.tell(record.params, result)
            crashes += bool(result.crash)
            best = best_trial(log.records)
            tracker.log_progress(
                number,
                best.result.utility if best else None,
                crashes,
                sum(1 for r in log.records if r.result.feasible),
                objective="capacity_rps" if cfg.objective == "capacity" else "goodput_tok_s",
            )
            bar.update(1)
            _set_postfix(bar, log.records, crashes)
    except BaseException:
        bar.close()
        tracker.abort("KILLED")
        raise
    bar.close()
    tracker.finish(summarize_study(log.records), log.path)
    return StudyOutcome(study_name, tracker.run_id, log.path, log.records)


def _set_postfix(bar: tqdm, records: list[TrialRecord], crashes: int) -> None:
    best = best_trial(records)
    goodput = f"{best.result.metrics['goodput_tok_s']:.0f} tok/s" if best else "-"
    capacity = best.result.metrics.get("capacity_rps") if best else None
    shown = f"best capacity={capacity:.3g} req/s" if capacity else f"best goodput={goodput}"
    bar.set_postfix_str(f"{shown}, crashes={crashes}")


def _requests_path(directory: Path, number: int) -> Path:
    return directory / "requests" / f"trial-{number:03d}.csv"


def _write_requests(
    directory: Path,
    number: int,
    records: list[RequestRecord],
    slo: SloContract,
    classes: RequestClasses | None,
) -> Path:
    """Write the per-request table atomically (temp file, fsync, rename)."""
    path = _requests_path(directory, number)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = requests_table(records, slo, classes)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def _config_diff(stored: dict[str, Any], cfg: DictConfig) -> str:
    now = flatten({k: v for k, v in to_container(cfg).items() if k not in _NOT_HASHED})
    old = flatten({k: v for k, v in stored.items() if k not in _NOT_HASHED})
    keys = sorted(k for k in now.keys() | old.keys() if now.get(k) != old.get(k))
    return ", ".join(keys[:5]) + (" ..." if len(keys) > 5 else "") if keys else "unknown"
