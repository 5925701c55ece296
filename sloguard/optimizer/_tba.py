"""Thermal Budget Annealing: crash-aware, feasible-first simulated annealing."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from sloguard.optimizer._base import BaseOptimizer
from sloguard.optimizer._blacklist import SubspaceBlacklist
from sloguard.optimizer._density import ParzenRatio
from sloguard.optimizer._encoding import encode, neighbour
from sloguard.optimizer._surrogate import CRASH, FEASIBLE, VIOLATION, FeasibilitySurrogate

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from sloguard.result import TrialResult
    from sloguard.space import SearchSpace


class TBAOptimizer(BaseOptimizer):
    """Simulated annealing whose temperature follows the remaining budget, taught by crashes.

    Each ask draws candidates around the current point (steps shrink as the temperature falls)
    plus a temperature-weighted share of uniform draws, drops those in blacklisted subspaces and
    those the feasibility surrogate expects to crash, and picks the one with the best
    ``log P(feasible) + TPE density ratio`` (good = the top ``gamma`` of the trials by utility,
    so before anything is feasible it points toward the least SLO violation). Each tell updates
    the surrogate and the blacklist and moves the current point by the Metropolis rule on
    utility ranks (so feasible beats infeasible, and the acceptance is free of goodput's scale).

    Example:
        >>> from sloguard.space import SearchSpace
        >>> opt = TBAOptimizer(SearchSpace.default(), seed=0, budget=15)
        >>> params = opt.ask()

    Args:
        space: The search space.
        seed: Seeds every random choice (per trial, so replays repeat exactly).
        budget: Trials the annealing schedule spans.
        n_initial: Uniform draws before annealing starts.
        n_candidates: Candidates scored per ask.
        t0: Starting temperature (rank units: accepting a drop of ``t0`` in rank has chance 1/e).
        oob_gate: Out-of-bag accuracy before the feasibility surrogate is trusted.
        crash_threshold: Candidates with a higher predicted crash chance are dropped.
        gamma: Share of scored (non-crashed) trials that counts as good for the density ratio.
        min_trials: Trials in a subspace before it can be blacklisted.
        crash_rate: Crash share that blacklists a subspace.
        start: ``"random"``: the ``n_initial`` first trials are uniform draws; ``"defaults"``:
            the first of them is the space's defaults (vLLM's own).
        bound_jump: Chance that a numeric knob a neighbour moves jumps to one of its bounds
            (where tuned settings often sit: the smallest prefill chunk, the largest batch).
    """

    name = "tba"

    def __init__(
        self,
        space: SearchSpace,
        seed: int,
        budget: int = 15,
        n_initial: int = 3,
        n_candidates: int = 64,
        t0: float = 0.5,
        oob_gate: float = 0.7,
        crash_threshold: float = 0.5,
        gamma: float = 0.25,
        min_trials: int = 3,
        crash_rate: float = 0.8,
        start: str = "defaults",
        bound_jump: float = 0.15,
    ) -> None:
        super().__init__(space, seed)
        self.budget = max(int(budget), 1)
        self.n_initial = n_initial
        self.n_candidates = n_candidates
        self.t0 = t0
        self.crash_threshold = crash_threshold
        self.gamma = gamma
        self.start = start
        self.bound_jump = bound_jump
        self.surrogate = FeasibilitySurrogate(oob_gate=oob_gate)
        self.blacklist = SubspaceBlacklist(space, min_trials=min_trials, crash_rate=crash_rate)
        self.params: list[dict[str, Any]] = []
        self.encoded: list[np.ndarray] = []  # self.params in unit coordinates
        self.results: list[TrialResult] = []
        self.current: int | None = None  # index of the current point in the history
        # another fidelity's trials (prime): encoded points and labels for the surrogate only
        self.prior_x: list[np.ndarray] = []
        self.prior_labels: list[int] = []

    @classmethod
    def from_config(
        cls, cfg: DictConfig, space: SearchSpace, seed: int, budget: int
    ) -> TBAOptimizer:
        return cls(space, seed, budget=budget, **tba_settings(cfg))

    @property
    def temperature(self) -> float:
        """``t0`` scaled by the share of the budget still to spend."""
        return self.t0 * max(self.budget - self.n_told, 0) / self.budget

    def _ask(self) -> dict[str, Any]:
        if self.start == "defaults" and not self.params:
            defaults = self.space.complete({})
            if _key(defaults) not in {_key(p) for p in self.running}:
                return defaults
        rng = self.trial_rng()
        if self.n_told < self.n_initial or self.current is None:
            candidates = [self.space.sample(rng) for _ in range(self.n_candidates)]
        else:
            t = self.temperature / self.t0 if self.t0 > 0 else 0.0
            n_uniform = round(self.n_candidates * 0.25 * t)
            base = self.params[self.current]
            candidates = [
                neighbour(
                    self.space,
                    base,
                    rng,
                    step=0.05 + 0.25 * t,
                    p_move=max(0.15, 0.5 * t),
                    p_bound=self.bound_jump,
                )
                for _ in range(self.n_candidates - n_uniform)
            ]
            candidates += [self.space.sample(rng) for _ in range(n_uniform)]
        running = {_key(p) for p in self.running}
        seen = running | {_key(p) for p in self.params}
        fresh = [c for c in candidates if _key(c) not in seen] or [
            c for c in candidates if _key(c) not in running
        ]
        allowed = [c for c in fresh if not self.blacklist.blocks(c)]
        if not allowed:
            allowed = self._unblocked_draw(rng, running)
        if self.n_told < self.n_initial and not self.prior_labels:
            return allowed[0]
        return allowed[int(np.argmax(self._acquisition(allowed, rng)))]

    def _tell(self, params: dict[str, Any], result: TrialResult) -> None:
        self.params.append(params)
        self.encoded.append(encode(self.space, params))
        self.results.append(result)
        self.blacklist.update(params, crashed=result.crash is not None, feasible=result.feasible)
        self._move(len(self.params) - 1)

    def prime(self, history: Sequence[tuple[dict[str, Any], TrialResult]]) -> None:
        """Add ``history`` to what the feasibility surrogate learns from (not to the annealing).

        A primed TBA scores even its first uniform draws with the surrogate.
        """
        for params, result in history:
            self.prior_x.append(encode(self.space, params))
            self.prior_labels.append(_label(result))

    def _acquisition(
        self, candidates: list[dict[str, Any]], rng: np.random.Generator
    ) -> np.ndarray:
        x = np.stack([encode(self.space, c) for c in candidates])
        labels = np.array(self.prior_labels + [_label(r) for r in self.results])
        self.surrogate.fit(
            np.stack(self.prior_x + self.encoded), labels, seed=int(rng.integers(2**31 - 1))
        )
        p_crash, p_feasible = self.surrogate.predict(x)
        score = np.log(p_feasible + 0.05)
        score[p_crash > self.crash_threshold] -= 1e6
        # feasible-first: utility ranks every feasible trial above every infeasible one and,
        # among infeasible ones, the smaller SLO violation higher, so before anything is
        # feasible the density ratio already points toward the feasible region
        utilities = {i: r.utility for i, r in enumerate(self.results) if r.utility is not None}
        scored = list(utilities)
        if len(scored) >= 2:
            scored.sort(key=utilities.__getitem__, reverse=True)
            n_good = max(1, math.ceil(self.gamma * len(scored)))
            good = set(scored[:n_good])
            mask = np.array([i in good for i in range(len(self.params))])
            history = np.stack(self.encoded)
            score += ParzenRatio(history[mask], history[~mask]).score(x)
        return score + rng.uniform(0.0, 1e-6, len(candidates))

    def _move(self, index: int) -> None:
        """Metropolis step from the current point to trial ``index``, on utility ranks."""
        utility = self.results[index].utility
        if utility is None:
            return  # a crash is never a place to stand
        if self.current is None:
            self.current = index
            return
        here = self.results[self.current].utility
        assert here is not None  # only scored trials become the current point
        if utility >= here:
            self.current = index
            return
        scored = sorted(r.utility for r in self.results if r.utility is not None)
        span = max(len(scored) - 1, 1)
        delta = (scored.index(utility) - scored.index(here)) / span
        draw = np.random.default_rng([self.seed, index, 7]).random()
        if draw < math.exp(delta / max(self.temperature, 1e-9)):
            self.current = index

    def _unblocked_draw(
        self, rng: np.random.Generator, running: set[tuple[Any, ...]]
    ) -> list[dict[str, Any]]:
        for _ in range(2000):
            params = self.space.sample(rng)
            if _key(params) not in running and not self.blacklist.blocks(params):
                return [params]
        return [params]  # the whole space is blacklisted: nothing better to offer


def _label(result: TrialResult) -> int:
    if result.crash is not None:
        return CRASH
    return FEASIBLE if result.feasible else VIOLATION


def _key(params: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(sorted(params.items()))


def tba_settings(cfg: DictConfig) -> dict[str, Any]:
    """TBA settings present in an optimizer config."""
    names = (
        "n_initial",
        "n_candidates",
        "t0",
        "oob_gate",
        "crash_threshold",
        "gamma",
        "min_trials",
        "crash_rate",
        "start",
        "bound_jump",
    )
    return {n: cfg[n] for n in names if n in cfg and cfg[n] is not None}
