"""TBA-TPE: TBA explores, then a TPE sampler warm-started with all of TBA's history exploits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from sloguard.config import TBA_TPE_ANNEALS
from sloguard.optimizer._base import BaseOptimizer
from sloguard.optimizer._tba import TBAOptimizer, tba_settings
from sloguard.optimizer._tpe import TPEOptimizer

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from sloguard.result import TrialResult
    from sloguard.space import SearchSpace


class TBATPEOptimizer(BaseOptimizer):
    """The seed's two-phase optimizer.

    Phase ``explore`` (trials numbered below ``handoff``) is :class:`TBAOptimizer` annealing
    over its own phase (or, with ``anneal="budget"``, over the whole budget); phase ``exploit``
    is a crash-aware :class:`TPEOptimizer` that has been told every trial so far, crashes as
    extreme constraint violations, so it starts from TBA's map of where configurations crash
    and where they meet the SLO.

    Args:
        space: The search space.
        seed: Seeds both phases.
        budget: The study's trials.
        handoff: Exploration trials: a share of ``budget`` when below 1, else a count.
        n_startup_trials: Random trials TPE would add of its own (0: TBA's history suffices).
        anneal: ``"handoff"``: TBA's temperature falls to 0 over its own phase; ``"budget"``:
            over the whole budget, so until the handoff it proposes what TBA alone would.
        tba_options: Settings passed to :class:`TBAOptimizer`.
    """

    name = "tba-tpe"

    def __init__(
        self,
        space: SearchSpace,
        seed: int,
        budget: int = 15,
        handoff: float = 0.4,
        n_startup_trials: int = 0,
        anneal: Literal["handoff", "budget"] = "handoff",
        **tba_options: Any,
    ) -> None:
        if anneal not in TBA_TPE_ANNEALS:
            raise ValueError(f"anneal={anneal!r}: give one of {', '.join(TBA_TPE_ANNEALS)}")
        super().__init__(space, seed)
        self.handoff = round(handoff * budget) if handoff < 1 else int(handoff)
        span = budget if anneal == "budget" else max(self.handoff, 1)
        self.tba = TBAOptimizer(space, seed, budget=span, **tba_options)
        self.tpe = TPEOptimizer(space, seed, n_startup_trials=n_startup_trials, crash_aware=True)

    @classmethod
    def from_config(
        cls, cfg: DictConfig, space: SearchSpace, seed: int, budget: int
    ) -> TBATPEOptimizer:
        return cls(
            space,
            seed,
            budget=budget,
            handoff=cfg.handoff,
            anneal=cfg.anneal,
            **tba_settings(cfg),
        )

    @property
    def phase(self) -> str:
        return "explore" if self.number < self.handoff else "exploit"

    def _ask(self) -> dict[str, Any]:
        return (self.tba if self.phase == "explore" else self.tpe).ask(self.number, self.running)

    def prime(self, history: Sequence[tuple[dict[str, Any], TrialResult]]) -> None:
        """Prime the exploring TBA's feasibility surrogate."""
        self.tba.prime(history)

    def _tell(self, params: dict[str, Any], result: TrialResult) -> None:
        self.tba.tell(params, result)
        self.tpe.tell(params, result)
