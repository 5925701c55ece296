"""The records that travel from a backend to the study's storage, MLflow and analysis."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sloguard.crash_classifier import CrashInfo


@dataclass
class RequestRecord:
    """One request as the client saw it; times are seconds from the start of the load phase.

    Args:
        request_id: Index of the request in the workload.
        prompt_len: Prompt tokens sent.
        target_output_len: ``max_tokens`` asked for.
        scheduled_time: When the arrival process wanted it sent.
        send_time: When it was sent.
        token_times: Arrival time of every output token (the first is the TTFT point).
        error: Why it failed (HTTP status, reset, timeout), or ``None`` when it succeeded.
    """

    request_id: int
    prompt_len: int
    target_output_len: int
    scheduled_time: float
    send_time: float
    token_times: np.ndarray = field(default_factory=lambda: np.empty(0))
    error: str | None = None

    @property
    def success(self) -> bool:
        return self.error is None and len(self.token_times) > 0

    @property
    def output_len(self) -> int:
        return len(self.token_times)


ABORT_ERROR = "aborted"  # prefix of errors of requests cut short by an early abort


def unsent_round_error(failed: int) -> str:
    """The error of a later round never sent because round ``failed`` of its request failed."""
    return f"not sent: an earlier round (request {failed}) failed"


@dataclass
class TrialResult:
    """What one evaluation of one configuration produced.

    Args:
        config: The knobs as launched (after repair).
        metrics: Percentiles, throughput, goodput and attainment (empty if the server never ran).
        crash: Why the trial failed, or ``None``.
        feasible: No crash and the SLO percentiles within their thresholds.
        utility: The value the optimizers maximise; ``None`` for a crash.
        server: Engine-side facts (KV cache tokens, preemptions, startup time, ...).
        requests: Per-request records; kept out of the trial log (written as a table instead).
        server_log: Path of the real server's log, if one ran.
        aborted_early: Why the measurement window was stopped once its SLO verdict (infeasible)
            was certain, or ``None`` if it ran to the end.
    """

    config: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    crash: CrashInfo | None = None
    feasible: bool = False
    utility: float | None = None
    server: dict[str, float] = field(default_factory=dict)
    requests: list[RequestRecord] = field(default_factory=list, repr=False)
    server_log: str | None = None
    aborted_early: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict without the per-request records."""
        return {
            "config": self.config,
            "metrics": self.metrics,
            "crash": self.crash.to_dict() if self.crash else None,
            "feasible": self.feasible,
            "utility": self.utility,
            "server": self.server,
            "server_log": self.server_log,
            "aborted_early": self.aborted_early,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialResult:
        crash = CrashInfo.from_dict(data["crash"]) if data.get("crash") else None
        return cls(
            config=data["config"],
            metrics=data.get("metrics", {}),
            crash=crash,
            feasible=data.get("feasible", False),
            utility=data.get("utility"),
            server=data.get("server", {}),
            server_log=data.get("server_log"),
            aborted_early=data.get("aborted_early"),
        )


@dataclass
class TrialRecord:
    """One finished trial of a study.

    Args:
        number: The trial's 0-based number in the study (a re-run keeps the number).
        params: The knobs the optimizer proposed (active ones only).
        result: The evaluation of the repaired configuration.
        phase: The optimizer phase that proposed it.
        repairs: What the repair pass changed.
        wall_s: Wall-clock seconds the evaluation took.
    """

    number: int
    params: dict[str, Any]
    result: TrialResult
    phase: str = ""
    repairs: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "params": self.params,
            "phase": self.phase,
            "repairs": self.repairs,
            "wall_s": round(self.wall_s, 4),
            "result": self.result.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialRecord:
        return cls(
            number=data["number"],
            params=data["params"],
            result=TrialResult.from_dict(data["result"]),
            phase=data.get("phase", ""),
            repairs=data.get("repairs", []),
            wall_s=data.get("wall_s", 0.0),
        )
