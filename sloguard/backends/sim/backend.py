"""The simulator behind the Backend protocol."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sloguard.backends._base import BackendSettings, BaseBackend, serve_in_turn
from sloguard.backends.sim._cluster import (
    EngineRun,
    ServingSettings,
    run_engine,
)
from sloguard.backends.sim._engine import EngineSettings, make_jitter
from sloguard.backends.sim._memory import load_oom, plan_memory, startup_seconds
from sloguard.backends.sim._roofline import StepTimeModel
from sloguard.crash_classifier import CrashCategory, CrashInfo
from sloguard.early_abort import ATTAINMENT_MAX, AttainmentWatch, truncate
from sloguard.metrics_collector import build_result
from sloguard.result import ABORT_ERROR, TrialResult
from sloguard.slo_contract import SloContract
from sloguard.workload import Workload

if TYPE_CHECKING:
    from collections.abc import Callable

    from omegaconf import DictConfig


def step_noise(settings: BackendSettings | DictConfig) -> float:
    """The step-time jitter sigma: ``backend.noise`` if set, else the hardware's measured one."""
    noise = settings.backend.noise
    return float(settings.hardware.step_noise if noise is None else noise)


class SimBackend(BaseBackend):
    """Evaluates a configuration on the discrete-event engine model, in milliseconds of CPU.

    Startup follows vLLM: config validation, memory planning (refusals carry vLLM's message text
    and go through the crash taxonomy), then the load phase on the v1 scheduler model. The same
    seed gives the same result. ``backend.startup_sleep_s`` sleeps once per trial (per launch,
    as a real server's start would take), for measuring parallel workers.
    """

    name = "sim"

    def evaluate(
        self,
        config: dict[str, Any],
        workload: Workload,
        slo: SloContract,
        *,
        seed: int,
        log_path: Path | None = None,
    ) -> TrialResult:
        time.sleep(self.settings.backend.startup_sleep_s)
        return self._evaluate(config, workload, slo, seed=seed)

    def evaluate_adaptive(
        self,
        config: dict[str, Any],
        next_workload: Callable[[list[TrialResult]], Workload | None],
        slo: SloContract,
        *,
        seed: int,
        log_path: Path | None = None,
    ) -> list[TrialResult]:
        time.sleep(self.settings.backend.startup_sleep_s)  # one launch serves every load
        return serve_in_turn(
            lambda load: self._evaluate(config, load, slo, seed=seed), next_workload
        )

    def gpus(self, config: dict[str, Any]) -> int:
        """The tensor parallel size times the engines: vLLM's data-parallel ones, else the
        simulator's replicas (each a server of its own)."""
        return int(config.get("tensor_parallel_size", 1)) * self._engines(config)

    def serving(self, config: dict[str, Any], slo: SloContract) -> ServingSettings:
        """Scheduler, replicas, router and speculation: the backend's, or the trial's knobs (a
        data-parallel size runs that many engines behind vLLM's balancer)."""
        backend = self.settings.backend
        spec = backend.spec_decode
        if "num_speculative_tokens" in config:  # vLLM's n-gram drafts: looked up, not computed
            tokens = int(config["num_speculative_tokens"])
            spec = dataclasses.replace(
                spec, enabled=tokens > 0, max_tokens=max(tokens, 1), draft_ratio=0.0
            )
        else:
            spec = dataclasses.replace(spec, enabled=bool(config.get("spec_decode", spec.enabled)))
        data_parallel = int(config.get("data_parallel_size", 1)) > 1  # vLLM's own balancer
        return ServingSettings(
            scheduler=config.get("scheduler", backend.scheduler),
            replicas=self._engines(config),
            router="dp-balance" if data_parallel else config.get("router", backend.router),
            soft_admission=backend.soft_admission,
            spec=spec,
            ttft_ms=slo.ttft_ms,
            tpot_ms=slo.itl_ms,
        )

    def _engines(self, config: dict[str, Any]) -> int:
        """Engines serving ``config``: vLLM's data-parallel size, else the simulator's replicas."""
        engines = int(config.get("data_parallel_size", 1))
        return (
            engines if engines > 1 else int(config.get("replicas", self.settings.backend.replicas))
        )

    def _evaluate(
        self,
        config: dict[str, Any],
        workload: Workload,
        slo: SloContract,
        *,
        seed: int,
    ) -> TrialResult:
        model, hw, backend = self.settings.model, self.settings.hardware, self.settings.backend
        wall = time.perf_counter()
        plan, crash = plan_memory(model, hw, config)
        if crash is not None or plan is None:
            return build_result(config, slo, crash=crash)
        server: dict[str, float] = {
            "kv_cache_tokens": plan.kv_cache_tokens,
            "max_concurrency": round(plan.max_concurrency, 3),
            "kv_cache_gib": round(plan.kv_cache_gib, 3),
            "startup_s": round(startup_seconds(model, hw, config), 3),
        }
        crash = load_oom(model, hw, config, plan)
        if crash is not None:
            return build_result(config, slo, crash=crash, server=server)
        rng = np.random.default_rng(seed)
        stop = _stop(workload, slo)
        serving = self.serving(config, slo)
        run = run_engine(
            workload,
            EngineSettings.of(config, plan.num_blocks, plan.block_size),
            StepTimeModel(model, hw, config),
            make_jitter(rng, step_noise(self.settings)),
            backend.timeout_s,
            arrival_delay_s=hw.request_overhead_ms * 1e-3,
            arrival_delay_per_running_s=hw.stream_overhead_ms * 1e-3,
            serving=serving,
            seed=seed,
            stop=stop,
        )
        server.update(
            num_steps=run.num_steps,
            num_preemptions=run.num_preemptions,
            peak_kv_usage=round(run.peak_kv_usage, 4),
            mean_batch_tokens=round(run.mean_batch_tokens, 2),
            prefix_cache_hit_rate=round(run.prefix_cache_hit_rate, 4),
            sim_wall_s=round(time.perf_counter() - wall, 4),
            **_serving_metrics(run),
        )
        if serving.spec.enabled:  # as a real server's /metrics counts them
            drafted = run.spec_draft_tokens
            rate = run.spec_accepted_tokens / drafted if drafted else 0.0
            server.update(spec_draft_tokens=drafted, spec_acceptance_rate=round(rate, 4))
        if run.stopped is not None and stop is not None:  # as a real load stopped then
            ended = [r for r in run.records if not (r.error or "").startswith(ABORT_ERROR)]
            result = build_result(
                config,
                slo,
                ended,
                run.duration_s,
                server=server,
                classes=workload.classes,
                aborted=run.stopped,
            )
            result.metrics[ATTAINMENT_MAX] = stop[1].most()
            return result
        cut = truncate(run.records, slo, workload.classes) if backend.early_abort else None
        if cut is not None:  # what a live window would have kept when it stopped
            kept, at, reason = cut
            start = min(r.send_time for r in run.records if r.send_time >= 0)
            return build_result(
                config,
                slo,
                kept,
                at - start,
                server=server,
                classes=workload.classes,
                aborted=reason,
            )
        if run.timed_out:
            unfinished = sum(1 for r in run.records if r.error and r.error.startswith("timeout"))
            crash = CrashInfo(
                CrashCategory.TIMEOUT,
                "load_timeout",
                f"{unfinished} of {len(run.records)} requests unfinished after "
                f"{backend.timeout_s:g} s of load",
                phase="load",
            )
        elif backend.cuda_error_rate > 0 and rng.random() < backend.cuda_error_rate:
            crash = CrashInfo(
                CrashCategory.CUDA,
                "illegal_memory_access",
                "RuntimeError: CUDA error: an illegal memory access was encountered",
                phase="load",
            )
        return build_result(
            config,
            slo,
            run.records,
            run.duration_s,
            crash=crash,
            server=server,
            classes=workload.classes,
        )


def _stop(workload: Workload, slo: SloContract) -> tuple[float, AttainmentWatch] | None:
    """The load's stop once its attainment target is lost (a capacity probe's), if it has one."""
    after = workload.stop_lost_after_s
    if after is None:
        return None
    return after, AttainmentWatch(len(workload), slo, workload.classes)


def _serving_metrics(run: EngineRun) -> dict[str, float]:
    """Best-effort counts, the planner's time, and each replica's share when there are several."""
    stats = run.replicas
    values: dict[str, float] = {}
    if any(r.planner_ms_max for r in stats):
        values["best_effort_requests"] = sum(r.best_effort for r in stats)
        values["planner_ms_mean"] = round(
            sum(r.planner_ms_mean * r.num_steps for r in stats) / max(run.num_steps, 1), 4
        )
        values["planner_ms_max"] = round(max(r.planner_ms_max for r in stats), 4)
    if len(stats) > 1:
        for i, r in enumerate(stats):
            values[f"replica{i}_requests"] = r.requests
            values[f"replica{i}_output_tokens"] = r.output_tokens
            values[f"replica{i}_preemptions"] = r.num_preemptions
            values[f"replica{i}_peak_kv_usage"] = round(r.peak_kv_usage, 4)
            values[f"replica{i}_best_effort"] = r.best_effort
    return values
