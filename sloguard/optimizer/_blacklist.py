"""Subspaces that keep crashing are not proposed again."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from sloguard.optimizer._encoding import to_unit
from sloguard.space import CategoricalKnob

if TYPE_CHECKING:
    from sloguard.space import SearchSpace

Key = tuple[Any, ...]


class SubspaceBlacklist:
    """Counts trials and crashes per subspace and blocks the ones that keep crashing.

    A subspace is a range (one of ``n_buckets`` equal slices of the unit, i.e. log, scale) of one
    numeric knob, alone or together with the value of one categorical knob, e.g. "enforce_eager
    is false and max_num_seqs in its top quarter". A subspace is blacklisted after
    ``min_trials`` trials in it, at least ``crash_rate`` of them crashes, and none feasible.

    Args:
        space: The search space.
        n_buckets: Slices per numeric knob.
        min_trials: Trials a subspace needs before it can be blacklisted.
        crash_rate: Share of crashes that blacklists it.
    """

    def __init__(
        self, space: SearchSpace, n_buckets: int = 4, min_trials: int = 3, crash_rate: float = 0.8
    ) -> None:
        self.space = space
        self.n_buckets = n_buckets
        self.min_trials = min_trials
        self.crash_rate = crash_rate
        self._trials: dict[Key, int] = defaultdict(int)
        self._crashes: dict[Key, int] = defaultdict(int)
        self._feasible: dict[Key, int] = defaultdict(int)
        self.blocked: set[Key] = set()

    def keys(self, params: dict[str, Any]) -> list[Key]:
        """The subspaces ``params`` lies in."""
        numeric, categorical = [], []
        for name, value in params.items():
            knob = self.space.knobs[name]
            if isinstance(knob, CategoricalKnob):
                if len(knob.choices) > 1:
                    categorical.append((name, value))
            else:
                bucket = min(int(to_unit(knob, value) * self.n_buckets), self.n_buckets - 1)
                numeric.append((name, bucket))
        return [(n,) for n in numeric] + [(c, n) for c in categorical for n in numeric]

    def update(self, params: dict[str, Any], crashed: bool, feasible: bool) -> None:
        """Count one finished trial."""
        for key in self.keys(params):
            self._trials[key] += 1
            self._crashes[key] += crashed
            self._feasible[key] += feasible
            if (
                self._trials[key] >= self.min_trials
                and not self._feasible[key]
                and self._crashes[key] >= self.crash_rate * self._trials[key]
            ):
                self.blocked.add(key)

    def blocks(self, params: dict[str, Any]) -> bool:
        """Whether ``params`` lies in a blacklisted subspace."""
        return bool(self.blocked) and any(k in self.blocked for k in self.keys(params))
