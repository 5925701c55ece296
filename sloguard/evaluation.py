"""One trial's evaluation: fit the proposed knobs for launch, then serve the workload.

Used by the study workers, ``sloguard evaluate``, calibration and the benchmarks alike.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sloguard.backends import create_backend
from sloguard.backends.sim import zero_load_ttft_ms
from sloguard.capacity import CapacitySearch, gpus_for_rate, per_gpu, search_capacity
from sloguard.config import CAPACITY_OBJECTIVES
from sloguard.exceptions import ConfigError
from sloguard.gpu_profile import MemoryGuard, detect_vram_gb
from sloguard.result import TrialRecord
from sloguard.slo_contract import SloContract
from sloguard.space import FloatKnob, IntKnob, Repair, SearchSpace
from sloguard.workload import Workload, build_workload

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from omegaconf import DictConfig

    from sloguard.backends import BaseBackend
    from sloguard.optimizer import BaseOptimizer
    from sloguard.result import TrialResult


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
    util, length = space.knobs["gpu_memory_utilization"], space.knobs["max_model_len"]
    assert isinstance(util, FloatKnob) and isinstance(length, IntKnob)
    guarded = guard.repair(repaired.config, util_high=util.high, len_low=length.low)
    # a max_model_len the guard lowered may now be below knobs that must not exceed it
    again = space.repair(guarded.config, max_position_embeddings)
    return Repair(again.config, repaired.changes + guarded.changes + again.changes)


def workload_from_config(cfg: DictConfig) -> Workload:
    """The study's requests; TTFT slowdown SLOs resolve against the hardware's zero-load TTFT."""
    return build_workload(
        cfg.workload, functools.partial(zero_load_ttft_ms, cfg.model, cfg.hardware)
    )


def check_load_fits(cfg: DictConfig, workload: Workload) -> None:
    """Refuse an open-loop schedule that outlasts the backend's load-phase limit: every trial
    would end as a timeout whatever its configuration.

    Raises:
        ConfigError: Naming the workload, how long its arrivals last, and the limit.
    """
    limit = cfg.backend.get("timeout_s")
    if (
        cfg.objective in CAPACITY_OBJECTIVES
        or cfg.workload.concurrency
        or limit is None
        or not len(workload)
    ):
        return  # closed loop, or a capacity search (its slower probes may time out: they fail)
    span = float(workload.arrival_times[-1])
    if span >= limit:
        raise ConfigError(
            f"workload={cfg.workload.name}: its {len(workload)} requests arrive over "
            f"{span:.0f} s, longer than the load-phase limit backend.timeout_s={limit:g}; lower "
            "workload.num_requests or raise backend.timeout_s"
        )


def _rescore_by_gpus(cfg: DictConfig) -> Callable[[TrialResult, int], TrialResult] | None:
    """How the objective rescores a capacity search by the GPUs a configuration runs on."""
    if cfg.objective == "capacity_per_gpu":
        return per_gpu
    if cfg.objective == "gpus_for_rate":
        return functools.partial(gpus_for_rate, target_rps=cfg.capacity.target_rps)
    return None


def trial_seed(seed: int, number: int) -> int:
    """The backend seed of trial ``number``."""
    return int(np.random.default_rng([seed, number, 1]).integers(2**31 - 1))


@dataclass
class TrialStep:
    """Evaluates proposed knobs as one trial: fit the config for launch, serve, measure.

    Args:
        space: The search space.
        guard: The memory guard.
        backend: Where configurations are evaluated.
        workload: The requests every trial serves.
        slo: The SLO contract.
        seed: The study seed (trial ``n`` evaluates with a seed derived from it).
        max_position_embeddings: The model's context limit.
        log_dir: Where real servers' logs go (``trial-NNN.log``).
        capacity: Search the highest passing request rate instead of serving one load.
        rescore_by_gpus: Rescores a capacity search by the GPUs the configuration runs on
            (:func:`~sloguard.capacity.per_gpu` or :func:`~sloguard.capacity.gpus_for_rate`).
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
    rescore_by_gpus: Callable[[TrialResult, int], TrialResult] | None = None

    @classmethod
    def from_config(
        cls, cfg: DictConfig, space: SearchSpace, slo: SloContract, log_dir: Path | None = None
    ) -> TrialStep:
        backend = create_backend(cfg)
        workload = workload_from_config(cfg)
        check_load_fits(cfg, workload)
        capacity = None
        if cfg.objective in CAPACITY_OBJECTIVES:
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
            _rescore_by_gpus(cfg),
        )

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
            if self.rescore_by_gpus is not None:
                result = self.rescore_by_gpus(result, self.backend.gpus(repair.config))
        return TrialRecord(
            number, params, result, phase, list(repair.changes), time.perf_counter() - start
        )

    def run_untracked(self, optimizer: BaseOptimizer, budget: int) -> list[TrialRecord]:
        """``budget`` trials in this process, ask -> evaluate -> tell, with no storage or MLflow.

        For benchmarks that run many studies; a user's study is :func:`sloguard.study.run_study`.
        """
        records = []
        for number in range(budget):
            record = self.evaluate(optimizer.ask(number), number, optimizer.phase)
            optimizer.tell(record.params, record.result)
            records.append(record)
        return records
