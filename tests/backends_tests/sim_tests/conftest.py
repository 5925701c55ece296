"""Serving a composed workload on the simulated engines, for the scheduler and router tests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from sloguard.backends.sim import EngineRun, EngineSettings, ServingSettings, StepTimeModel
from sloguard.backends.sim import run_engine as run
from sloguard.backends.sim._engine import make_jitter
from sloguard.backends.sim._memory import plan_memory
from sloguard.backends.sim._roofline import zero_load_ttft_ms
from sloguard.backends.sim.backend import step_noise
from sloguard.space import SearchSpace
from sloguard.tune import compose_config
from sloguard.workload import Workload, build_workload

Serve = Callable[..., tuple[EngineRun, Workload]]


def serve_composed(
    overrides: list[str],
    serving: ServingSettings | None = None,
    noise: float | None = None,
    num_blocks: int | None = None,
    knobs: dict[str, object] | None = None,
    jitter_seed: int = 0,
) -> tuple[EngineRun, Workload]:
    """A composed workload served under the space's default knobs (updated by ``knobs``)."""
    cfg = compose_config(overrides)
    config = {**SearchSpace.from_config(cfg.space).complete({}), **(knobs or {})}
    workload = build_workload(
        cfg.workload, lambda p: zero_load_ttft_ms(cfg.model, cfg.hardware, p)
    )
    plan, _ = plan_memory(cfg.model, cfg.hardware, config)
    assert plan is not None
    sigma = step_noise(cfg) if noise is None else noise
    return run(
        workload,
        EngineSettings.of(config, num_blocks or plan.num_blocks, plan.block_size),
        StepTimeModel(cfg.model, cfg.hardware, config),
        make_jitter(np.random.default_rng(jitter_seed), sigma),
        cfg.backend.timeout_s,
        arrival_delay_s=cfg.hardware.request_overhead_ms * 1e-3,
        arrival_delay_per_running_s=cfg.hardware.stream_overhead_ms * 1e-3,
        serving=serving,
    ), workload


@pytest.fixture
def serve() -> Serve:
    """``serve(overrides, serving=..., noise=None, num_blocks=None)``: a run and its workload."""
    return serve_composed


def attainment(run: EngineRun, workload: Workload) -> float:
    """Share of requests that met their class's SLOs."""
    classes = workload.classes
    assert classes is not None
    good = sum(
        1
        for i, r in enumerate(run.records)
        if r.success and classes.meets_slo(i, r.send_time, r.token_times)
    )
    return good / len(run.records)
