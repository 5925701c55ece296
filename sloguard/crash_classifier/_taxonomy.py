"""The crash taxonomy: category, subcause, evidence line, phase."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Any


class CrashCategory(str, enum.Enum):
    """Why a trial failed: the seed's four categories, ``infra``, and ``unknown``.

    ``infra`` failures are not the configuration's fault (a port in use, a model that cannot be
    reached, a full disk, a process killed from outside, a start cut short on a busy host): they
    are retried and never told to an optimizer as a crash of that configuration.
    """

    OOM = "oom"
    CUDA = "cuda"
    TIMEOUT = "timeout"
    CONFIG = "config"
    INFRA = "infra"
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

    @property
    def configuration_fault(self) -> bool:
        """Whether the configuration is to blame (everything but ``infra``)."""
        return self.category is not CrashCategory.INFRA

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
