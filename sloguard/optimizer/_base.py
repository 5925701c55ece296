"""The Optimizer extension point: ask for a configuration, tell its result."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from sloguard.result import TrialResult
    from sloguard.space import SearchSpace


class BaseOptimizer(abc.ABC):
    """Proposes knob configurations and learns from their results.

    The loop asks once, evaluates, and tells once per trial. A resumed study tells the finished
    trials of its log to a fresh optimizer before the first ask; every optimizer draws trial
    ``n``'s randomness from ``(seed, n)``, so a resumed study proposes what an uninterrupted one
    would have.

    Args:
        space: The search space.
        seed: Seeds every random choice.
    """

    name: str = ""

    def __init__(self, space: SearchSpace, seed: int) -> None:
        self.space = space
        self.seed = seed
        self.n_told = 0

    @classmethod
    def from_config(
        cls, cfg: DictConfig, space: SearchSpace, seed: int, budget: int
    ) -> BaseOptimizer:
        """Build from the ``optimizer`` config group and the study budget; override to read
        settings."""
        return cls(space, seed)

    @abc.abstractmethod
    def ask(self) -> dict[str, Any]:
        """Return the active knobs of the next configuration to try."""

    def tell(self, params: dict[str, Any], result: TrialResult) -> None:
        """Record a finished trial (one this optimizer asked, or one replayed from a log)."""
        self._tell(params, result)
        self.n_told += 1

    def _tell(self, params: dict[str, Any], result: TrialResult) -> None:  # noqa: B027
        """Learn from a result; the default learns nothing."""

    @property
    def phase(self) -> str:
        """Which phase the next ask belongs to (two-phase optimizers override this)."""
        return self.name

    def trial_rng(self) -> np.random.Generator:
        """The generator for the trial about to be asked."""
        return np.random.default_rng([self.seed, self.n_told])

    def trial_seed(self) -> int:
        """A 32-bit seed for the trial about to be asked (for samplers that take an int)."""
        return int(self.trial_rng().integers(2**31 - 1))
