"""SLO-Guard: a crash-aware autotuner for vLLM serving."""

from sloguard.crash_classifier import CrashCategory, CrashInfo
from sloguard.exceptions import ConfigError
from sloguard.result import RequestRecord, TrialResult
from sloguard.slo_contract import SloContract
from sloguard.space import SearchSpace
from sloguard.workload import Workload, build_workload

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "CrashCategory",
    "CrashInfo",
    "RequestRecord",
    "SearchSpace",
    "SloContract",
    "TrialResult",
    "Workload",
    "build_workload",
]
