"""Optimizers behind one ask/tell protocol; add one with a module and a registry line."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sloguard.optimizer._base import BaseOptimizer
from sloguard.optimizer._constrained_bo import ConstrainedBOOptimizer
from sloguard.optimizer._grid import GridOptimizer
from sloguard.optimizer._random import RandomOptimizer
from sloguard.optimizer._scoot import ScootOptimizer
from sloguard.optimizer._tba import TBAOptimizer
from sloguard.optimizer._tba_tpe import TBATPEOptimizer
from sloguard.optimizer._tpe import TPEOptimizer
from sloguard.optimizer._warm_start import WarmStart

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from sloguard.space import SearchSpace

OPTIMIZERS: dict[str, type[BaseOptimizer]] = {
    "random": RandomOptimizer,
    "tpe": TPEOptimizer,
    "tba": TBAOptimizer,
    "tba-tpe": TBATPEOptimizer,
    "constrained-bo": ConstrainedBOOptimizer,
    "grid": GridOptimizer,
    "scoot": ScootOptimizer,
}


def create_optimizer(cfg: DictConfig, space: SearchSpace, seed: int, budget: int) -> BaseOptimizer:
    """Instantiate the optimizer ``cfg.name`` with the settings it accepts."""
    return OPTIMIZERS[cfg.name].from_config(cfg, space, seed, budget)


__all__ = [
    "OPTIMIZERS",
    "BaseOptimizer",
    "ConstrainedBOOptimizer",
    "GridOptimizer",
    "RandomOptimizer",
    "ScootOptimizer",
    "TBAOptimizer",
    "TBATPEOptimizer",
    "TPEOptimizer",
    "WarmStart",
    "create_optimizer",
]
