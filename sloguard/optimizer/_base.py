"""The Optimizer extension point: ask for a configuration, tell its result."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from sloguard.result import TrialResult
    from sloguard.space import SearchSpace


class BaseOptimizer(abc.ABC):
    """Proposes knob configurations and learns from their results.

    A study's state lives in its Optuna storage: before each ask, the finished trials are told
    in trial order (to a fresh optimizer, or only the new ones to a cached one), and the trials
    other workers are running now are passed to :meth:`ask`. Every random choice of trial ``n``
    derives from ``(seed, n)``, so a study replayed from its storage proposes what an
    uninterrupted one would have.

    Args:
        space: The search space.
        seed: Seeds every random choice.
    """

    name: str = ""

    def __init__(self, space: SearchSpace, seed: int) -> None:
        self.space = space
        self.seed = seed
        self.n_told = 0
        self.number = 0  # the trial being asked for
        self.running: list[dict[str, Any]] = []  # proposals other workers are evaluating now

    @classmethod
    def from_config(
        cls, cfg: DictConfig, space: SearchSpace, seed: int, budget: int
    ) -> BaseOptimizer:
        """Build from the ``optimizer`` config group and the study budget; override to read
        settings."""
        return cls(space, seed)

    def ask(
        self, number: int | None = None, running: Sequence[dict[str, Any]] = ()
    ) -> dict[str, Any]:
        """Return the active knobs of the configuration to try as trial ``number``.

        Args:
            number: The trial's number in the study (default: the trials told so far).
            running: Configurations other workers are evaluating now (not to be repeated).
        """
        self.number = self.n_told if number is None else number
        self.running = list(running)
        return self._ask()

    @abc.abstractmethod
    def _ask(self) -> dict[str, Any]:
        """The proposal for trial :attr:`number`, given :attr:`running`."""

    def tell(self, params: dict[str, Any], result: TrialResult) -> None:
        """Record a finished trial (in trial order)."""
        self._tell(params, result)
        self.n_told += 1

    def _tell(self, params: dict[str, Any], result: TrialResult) -> None:  # noqa: B027
        """Learn from a result; the default learns nothing."""

    def prime(self, history: Sequence[tuple[dict[str, Any], TrialResult]]) -> None:  # noqa: B027
        """Learn from another fidelity's trials before the first ask (e.g. the simulator's).

        They are a prior, not results of this study: an optimizer with a feasibility model
        learns where configurations crash or miss the SLO from them; the default ignores them.
        """

    @property
    def phase(self) -> str:
        """Which phase the last ask belonged to (two-phase optimizers override this)."""
        return self.name

    def trial_rng(self) -> np.random.Generator:
        """The generator for the trial being asked."""
        return np.random.default_rng([self.seed, self.number])

    def trial_seed(self) -> int:
        """A 32-bit seed for the trial being asked (for samplers that take an int)."""
        return int(self.trial_rng().integers(2**31 - 1))
