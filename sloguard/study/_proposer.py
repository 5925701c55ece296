"""The one adapter between a shared study and any optimizer: state rebuilt from the storage.

Before each ask, the study's finished trials are told to the optimizer in the order they
finished; a cached optimizer is told only the new ones when what it was told is still a prefix
of that order (always, with one worker), else a fresh one is built and told everything. Trials
running elsewhere are passed to the ask, so TPE's constant liar and TBA see them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sloguard.optimizer import BaseOptimizer
    from sloguard.result import TrialRecord


class Proposer:
    """Asks an optimizer rebuilt from a study's history for the next configuration.

    Example:
        >>> from sloguard.optimizer import RandomOptimizer
        >>> from sloguard.space import SearchSpace
        >>> proposer = Proposer(lambda: RandomOptimizer(SearchSpace.default(), seed=0))
        >>> params, phase = proposer.propose(0, finished=[], running=[])

    Args:
        make_optimizer: Builds a fresh optimizer with the study's settings.
    """

    def __init__(self, make_optimizer: Callable[[], BaseOptimizer]) -> None:
        self.make_optimizer = make_optimizer
        self._optimizer: BaseOptimizer | None = None
        self._told: list[int] = []  # trial numbers told to the cached optimizer, in order

    def propose(
        self,
        number: int,
        finished: Sequence[TrialRecord],
        running: Sequence[dict[str, Any]],
    ) -> tuple[dict[str, Any], str]:
        """The configuration for trial ``number`` and the optimizer phase that chose it.

        Args:
            number: The trial to propose for.
            finished: The study's finished trials in the order they finished.
            running: Proposals other workers are evaluating now.
        """
        order = [r.number for r in finished]
        if self._optimizer is None or order[: len(self._told)] != self._told:
            self._optimizer, self._told = self.make_optimizer(), []
        for record in finished[len(self._told) :]:
            self._optimizer.tell(record.params, record.result)
            self._told.append(record.number)
        params = self._optimizer.ask(number, running)
        return params, self._optimizer.phase
