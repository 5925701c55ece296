"""The embedded simulator of a vLLM-like engine (the default backend)."""

from sloguard.backends.sim._engine import EngineRun, EngineSettings, run_engine
from sloguard.backends.sim._memory import MemoryPlan, plan_memory
from sloguard.backends.sim._roofline import StepTimeModel, zero_load_ttft_ms
from sloguard.backends.sim.backend import SimBackend

__all__ = [
    "EngineRun",
    "EngineSettings",
    "MemoryPlan",
    "SimBackend",
    "StepTimeModel",
    "plan_memory",
    "run_engine",
    "zero_load_ttft_ms",
]
