"""Constrained Bayesian optimisation with Gaussian processes (Optuna's GPSampler)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

from sloguard._optional import require
from sloguard.optimizer._tpe import CRASH_VIOLATION, TPEOptimizer

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from sloguard.space import SearchSpace


class ConstrainedBOOptimizer(TPEOptimizer):
    """GP-based constrained BO: a GP on the objective (goodput or capacity) and one on the
    constraint (crash, SLO violation).

    Optuna's ``GPSampler`` is used rather than botorch: it reads the same stored constraints as
    the crash-aware TPE, needs no extra framework beyond PyTorch, and is maintained with the
    sampler this project already builds on. The conditional knob (``enable_chunked_prefill``)
    is outside the GP's fixed search space and is drawn at random.

    Args:
        space: The search space.
        seed: Seeds the sampler per trial.
        n_startup_trials: Random trials before the GP is fitted.
    """

    name = "constrained-bo"

    def __init__(self, space: SearchSpace, seed: int, n_startup_trials: int = 5) -> None:
        require("torch", "optimizer 'constrained-bo' (Optuna's GPSampler)", "bo")
        super().__init__(space, seed, n_startup_trials=n_startup_trials, crash_aware=True)

    @classmethod
    def from_config(
        cls, cfg: DictConfig, space: SearchSpace, seed: int, budget: int
    ) -> ConstrainedBOOptimizer:
        return cls(space, seed, n_startup_trials=cfg.n_startup_trials)

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        told = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if all(t.constraints.get("violation") == CRASH_VIOLATION for t in told):
            # only crashes so far (or nothing): every constraint value is the same and the GP
            # has nothing to model, so draw at random until something survives
            return optuna.samplers.RandomSampler(seed=self.trial_seed())
        return optuna.samplers.GPSampler(
            seed=self.trial_seed(),
            n_startup_trials=self.n_startup_trials,
            warn_independent_sampling=False,
        )
