"""The crash taxonomy: every failed trial is oom, cuda, timeout or config (else unknown).

A crash carries a subcause and the evidence line it was read from, so a user can see at a glance
why a configuration died and the optimizers can learn which regions die.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Any


class CrashCategory(str, enum.Enum):
    """The four categories of the seed's taxonomy, plus ``unknown`` for the unexplained."""

    OOM = "oom"
    CUDA = "cuda"
    TIMEOUT = "timeout"
    CONFIG = "config"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class CrashInfo:
    """Why a trial failed.

    Args:
        category: The taxonomy category.
        subcause: A short machine-readable cause, e.g. ``kv_cache_too_small``.
        evidence: The log line or message the category was read from.
        phase: ``startup`` (the server never served) or ``load`` (it died or hung under load).
    """

    category: CrashCategory
    subcause: str
    evidence: str
    phase: str = "startup"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["category"] = self.category.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CrashInfo:
        return cls(
            CrashCategory(data["category"]),
            data["subcause"],
            data["evidence"],
            data.get("phase", "startup"),
        )
