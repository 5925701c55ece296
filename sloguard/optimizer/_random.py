"""Uniform random search (baseline)."""

from __future__ import annotations

from typing import Any

from sloguard.optimizer._base import BaseOptimizer


class RandomOptimizer(BaseOptimizer):
    """Draws every configuration independently and uniformly (log-uniformly where set).

    Example:
        >>> from sloguard.space import SearchSpace
        >>> opt = RandomOptimizer(SearchSpace.default(), seed=0)
        >>> params = opt.ask()
    """

    name = "random"

    def _ask(self) -> dict[str, Any]:
        return self.space.sample(self.trial_rng())
