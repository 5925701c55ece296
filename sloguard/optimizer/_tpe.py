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

CRASH_VIOLATION = 100.0

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


def crash_constraints(result: TrialResult) -> dict[str, float]:
    """Feasibility as one Optuna constraint (<= 0 is satisfied).

    A crash is an extreme violation (:data:`CRASH_VIOLATION`); an SLO miss violates by its
    relative excess over the SLO; a feasible trial satisfies it. One constraint rather than two
    keeps a GP-based sampler to one extra model.
    """
    if result.crash is not None:
        return {"violation": CRASH_VIOLATION}
    slo = 0.0 if result.feasible or result.utility is None else -result.utility
    return {"violation": max(slo, 0.0)}


def objective_value(result: TrialResult) -> float:
    """The objective's figure, which a constrained sampler models whether or not the trial met
    the SLO: capacity (req/s, per GPU under ``objective=capacity_per_gpu``, the target rate per
    GPU needed under ``objective=gpus_for_rate``) for a capacity search, else goodput (tok/s); 0
    for a crash.

    For a feasible trial it is its utility. A capacity search in which no rate passed scores 0,
    as a crash does; its constraint (the attainment shortfall) tells the two apart.
    """
    if result.crash is not None:
        return 0.0
    metrics = result.metrics
    for name in ("target_per_gpu_rps", "capacity_per_gpu_rps", "capacity_rps", "goodput_tok_s"):
        if name in metrics:
            return float(metrics[name])
    return 0.0


class TPEOptimizer(BaseOptimizer):
    """Optuna's TPE sampler behind ask/tell.

    Cold (the default) it has no crash awareness: a crash is told as a failed trial, which TPE
    ignores, and other trials are told with their utility. With ``crash_aware`` every trial is
    told as complete with :func:`objective_value` and the constraints of
    :func:`crash_constraints`, so TPE's constrained split learns where configurations crash or
    miss the SLO.

    Args:
        space: The search space.
        seed: Seeds the sampler (re-derived per trial so resumed studies repeat exactly).
        n_startup_trials: Random trials before TPE's model takes over.
        crash_aware: Tell crashes and SLO misses as constraint violations.
    """

    name = "tpe"

    def __init__(
        self, space: SearchSpace, seed: int, n_startup_trials: int = 5, crash_aware: bool = False
    ) -> None:
        super().__init__(space, seed)
        self.n_startup_trials = n_startup_trials
        self.crash_aware = crash_aware
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = optuna.create_study(direction="maximize")
        self._pending: optuna.Trial | None = None
        self._distributions = {n: to_distribution(k) for n, k in space.knobs.items()}

    @classmethod
    def from_config(
        cls, cfg: DictConfig, space: SearchSpace, seed: int, budget: int
    ) -> TPEOptimizer:
        return cls(space, seed, n_startup_trials=cfg.n_startup_trials)

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        """The sampler for the trial about to be asked."""
        return optuna.samplers.TPESampler(
            n_startup_trials=self.n_startup_trials, seed=self.trial_seed()
        )

    def _ask(self) -> dict[str, Any]:
        # trials other workers are running enter as RUNNING trials, which TPE's constant liar
        # scores as the worst observation, so the proposal moves away from them; afterwards
        # they are failed, which every sampler ignores
        if self._pending is not None:  # asked but never told (its trial died): forget it
            self.study.tell(self._pending, state=TrialState.FAIL)
            self._pending = None
        liars = len(self.study.get_trials(deepcopy=False))
        for params in self.running:
            self.study.add_trial(
                optuna.trial.create_trial(
                    state=TrialState.RUNNING,
                    params=params,
                    distributions={k: self._distributions[k] for k in params},
                )
            )
        self.study.sampler = self.make_sampler()
        self._pending = self.study.ask()
        params = suggest(self._pending, self.space)
        for number in range(liars, liars + len(self.running)):
            self.study.tell(number, state=TrialState.FAIL)
        return params

    def _tell(self, params: dict[str, Any], result: TrialResult) -> None:
        if self.crash_aware:
            state = TrialState.COMPLETE
            value: float | None = objective_value(result)
            constraints: dict[str, float] | None = crash_constraints(result)
        else:
            failed = result.utility is None
            state = TrialState.FAIL if failed else TrialState.COMPLETE
            value, constraints = (None if failed else result.utility), None
        if self._pending is not None and self._pending.params == params:
            trial, self._pending = self._pending, None
            for key, violation in (constraints or {}).items():
                trial.set_constraint(key, violation)
            self.study.tell(trial, value, state=state)
            return
        self.study.add_trial(
            optuna.trial.create_trial(
                state=state,
                value=value,
                params=params,
                constraints=constraints,
                distributions={k: self._distributions[k] for k in params},
            )
        )
