"""Optimizers behind one ask/tell protocol; add one with a module and a registry line."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sloguard.optimizer._base import BaseOptimizer
from sloguard.optimizer._random import RandomOptimizer
from sloguard.optimizer._tpe import TPEOptimizer

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from sloguard.space import SearchSpace

OPTIMIZERS: dict[str, type[BaseOptimizer]] = {
    "random": RandomOptimizer,
    "tpe": TPEOptimizer,
}


def create_optimizer(cfg: DictConfig, space: SearchSpace, seed: int) -> BaseOptimizer:
    """Instantiate the optimizer ``cfg.name`` with the settings it accepts."""
    return OPTIMIZERS[cfg.name].from_config(cfg, space, seed)


__all__ = ["OPTIMIZERS", "BaseOptimizer", "RandomOptimizer", "TPEOptimizer", "create_optimizer"]
