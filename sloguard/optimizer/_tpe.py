"""Optuna's TPE sampler, cold start (baseline)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from sloguard.optimizer._base import BaseOptimizer
from sloguard.space import CategoricalKnob, FloatKnob, IntKnob

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from sloguard.result import TrialResult
    from sloguard.space import Knob, SearchSpace


def to_distribution(knob: Knob) -> BaseDistribution:
    """The Optuna distribution of one knob."""
    if isinstance(knob, IntKnob):
        return IntDistribution(knob.low, knob.high, log=knob.log)
    if isinstance(knob, FloatKnob):
        return FloatDistribution(knob.low, knob.high, log=knob.log)
    assert isinstance(knob, CategoricalKnob)
    return CategoricalDistribution(knob.choices)


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Suggest the active knobs of ``space`` on an Optuna trial, parents before children."""
    params: dict[str, Any] = {}
    for name, knob in space.knobs.items():
        if not space.is_active(name, params):
            continue
        if isinstance(knob, IntKnob):
            params[name] = trial.suggest_int(name, knob.low, knob.high, log=knob.log)
        elif isinstance(knob, FloatKnob):
            params[name] = trial.suggest_float(name, knob.low, knob.high, log=knob.log)
        else:
            params[name] = trial.suggest_categorical(name, list(knob.choices))
    return params


class TPEOptimizer(BaseOptimizer):
    """Optuna's TPE, cold start, with no crash awareness.

    A crash is told as a failed trial, which TPE ignores; SLO-violating trials are told with
    their (negative) utility. This is the baseline the crash-aware optimizers are measured
    against.

    Args:
        space: The search space.
        seed: Seeds the sampler (re-derived per trial so resumed studies repeat exactly).
        n_startup_trials: Random trials before TPE's model takes over.
    """

    name = "tpe"

    def __init__(self, space: SearchSpace, seed: int, n_startup_trials: int = 5) -> None:
        super().__init__(space, seed)
        self.n_startup_trials = n_startup_trials
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = optuna.create_study(direction="maximize")
        self._pending: optuna.Trial | None = None
        self._distributions = {n: to_distribution(k) for n, k in space.knobs.items()}

    @classmethod
    def from_config(cls, cfg: DictConfig, space: SearchSpace, seed: int) -> TPEOptimizer:
        return cls(space, seed, n_startup_trials=cfg.n_startup_trials)

    def ask(self) -> dict[str, Any]:
        self.study.sampler = optuna.samplers.TPESampler(
            n_startup_trials=self.n_startup_trials, seed=self.trial_seed()
        )
        self._pending = self.study.ask()
        return suggest(self._pending, self.space)

    def _tell(self, params: dict[str, Any], result: TrialResult) -> None:
        value = result.utility
        if self._pending is not None and self._pending.params == params:
            trial, self._pending = self._pending, None
            if value is None:
                self.study.tell(trial, state=TrialState.FAIL)
            else:
                self.study.tell(trial, value)
            return
        self.study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.FAIL if value is None else TrialState.COMPLETE,
                value=value,
                params=params,
                distributions={k: self._distributions[k] for k in params},
            )
        )
