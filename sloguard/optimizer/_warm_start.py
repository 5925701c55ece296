"""A warm start from another fidelity: given configurations go first, a prior history primes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sloguard.optimizer._base import BaseOptimizer

if TYPE_CHECKING:
    from sloguard.result import TrialResult

PRIOR_PHASE = "prior"


class WarmStart(BaseOptimizer):
    """Runs ``first`` as the study's first trials, then hands over to ``inner``.

    ``inner`` is told every trial of this study (the first ones included) and, before that, is
    primed with ``history`` from another fidelity (:meth:`BaseOptimizer.prime`): the history
    teaches its feasibility model where configurations crash or miss the SLO, while only this
    study's own measurements count as results.

    Args:
        inner: The optimizer that proposes after ``first``.
        first: Configurations for trials ``0 .. len(first) - 1``, best first.
        history: The prior's trials as ``(params, result)``.
    """

    def __init__(
        self,
        inner: BaseOptimizer,
        first: Sequence[dict[str, Any]],
        history: Sequence[tuple[dict[str, Any], TrialResult]] = (),
    ) -> None:
        super().__init__(inner.space, inner.seed)
        self.inner = inner
        self.first = [dict(p) for p in first]
        self.name = inner.name
        inner.prime(history)

    @property
    def phase(self) -> str:
        return PRIOR_PHASE if self.number < len(self.first) else self.inner.phase

    def _ask(self) -> dict[str, Any]:
        if self.number < len(self.first) and self.first[self.number] not in self.running:
            return dict(self.first[self.number])
        return self.inner.ask(self.number, self.running)

    def _tell(self, params: dict[str, Any], result: TrialResult) -> None:
        self.inner.tell(params, result)
