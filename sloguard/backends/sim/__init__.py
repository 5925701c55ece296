"""The embedded simulator of a vLLM-like engine (the default backend)."""

from sloguard.backends.sim._cluster import (
    EngineRun,
    ReplicaStats,
    ServingSettings,
    run_engine,
)
from sloguard.backends.sim._engine import Engine, EngineSettings, Scheduler, StepPlan
from sloguard.backends.sim._memory import MemoryPlan, plan_memory
from sloguard.backends.sim._roofline import StepTimeModel, zero_load_ttft_ms
from sloguard.backends.sim._router import ROUTERS, Router
from sloguard.backends.sim._scheduler import VllmScheduler
from sloguard.backends.sim._slos_serve import SlosServeScheduler
from sloguard.backends.sim.backend import SimBackend
from sloguard.config import SCHEDULERS

__all__ = [
    "ROUTERS",
    "SCHEDULERS",
    "Engine",
    "EngineRun",
    "EngineSettings",
    "MemoryPlan",
    "ReplicaStats",
    "Router",
    "Scheduler",
    "ServingSettings",
    "SimBackend",
    "SlosServeScheduler",
    "StepPlan",
    "StepTimeModel",
    "VllmScheduler",
    "plan_memory",
    "run_engine",
    "zero_load_ttft_ms",
]
