"""A SCOOT-style baseline: BO whose proposals a random forest screens for hidden constraints."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.trial import TrialState
from sklearn.ensemble import RandomForestClassifier

from sloguard.optimizer._encoding import encode
from sloguard.optimizer._tpe import TPEOptimizer

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from sloguard.result import TrialResult
    from sloguard.space import SearchSpace


class ScootOptimizer(TPEOptimizer):
    """SCOOT's recipe (Cheng et al., WWW 2025) on Optuna's TPE, as we read the paper.

    A cold TPE (crashes told as failures) proposes; a random forest trained on every trial so
    far, crashed or not, predicts each proposal's probability of feasibility (POF). Proposals
    with a POF below the threshold are discarded and TPE draws again, up to ``n_candidates``
    draws; if none passes, the one with the highest POF runs. The threshold adapts: it rises by
    ``pof_step`` after a crash (be more careful) and falls by ``pof_step`` after a trial that
    ran (explore more), within ``[pof_min, pof_max]``. SCOOT's known constraints are the
    space's repair rules here, and its multi-objective mode is not reproduced: the objective is
    the study's utility.

    Args:
        space: The search space.
        seed: Seeds the sampler and the forest per trial.
        n_startup_trials: Random trials before TPE's model takes over.
        n_candidates: TPE draws screened per ask.
        pof_threshold: The starting POF threshold.
        pof_step: How far one trial moves the threshold.
        pof_min: The lowest threshold.
        pof_max: The highest threshold.
    """

    name = "scoot"

    def __init__(
        self,
        space: SearchSpace,
        seed: int,
        n_startup_trials: int = 5,
        n_candidates: int = 16,
        pof_threshold: float = 0.5,
        pof_step: float = 0.1,
        pof_min: float = 0.1,
        pof_max: float = 0.9,
    ) -> None:
        super().__init__(space, seed, n_startup_trials=n_startup_trials)
        self.n_candidates = n_candidates
        self.threshold = pof_threshold
        self.pof_step, self.pof_min, self.pof_max = pof_step, pof_min, pof_max
        self._x: list[np.ndarray] = []
        self._crashed: list[bool] = []
        self._draw = 0

    @classmethod
    def from_config(
        cls, cfg: DictConfig, space: SearchSpace, seed: int, budget: int
    ) -> ScootOptimizer:
        return cls(
            space,
            seed,
            n_startup_trials=cfg.n_startup_trials,
            n_candidates=cfg.n_candidates or 16,
            pof_threshold=cfg.pof_threshold,
            pof_step=cfg.pof_step,
        )

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        seed = np.random.default_rng([self.seed, self.number, self._draw]).integers(2**31 - 1)
        return optuna.samplers.TPESampler(n_startup_trials=self.n_startup_trials, seed=int(seed))

    def _ask(self) -> dict[str, Any]:
        forest = self._forest()
        best: tuple[float, dict[str, Any]] | None = None
        for draw in range(self.n_candidates):
            self._draw = draw
            params = super()._ask()
            if forest is None:
                return params
            pof = self._pof(forest, params)
            if pof >= self.threshold:
                return params
            if best is None or pof > best[0]:
                best = (pof, params)
            assert self._pending is not None
            self.study.tell(self._pending, state=TrialState.FAIL)  # screened out: TPE ignores it
            self._pending = None
        assert best is not None
        return best[1]

    def _tell(self, params: dict[str, Any], result: TrialResult) -> None:
        super()._tell(params, result)
        crashed = result.crash is not None
        self._x.append(encode(self.space, params))
        self._crashed.append(crashed)
        step = self.pof_step if crashed else -self.pof_step
        self.threshold = min(max(self.threshold + step, self.pof_min), self.pof_max)

    def _forest(self) -> RandomForestClassifier | None:
        """The hidden-constraint model, once both crashed and running trials were seen."""
        if len(set(self._crashed)) < 2:
            return None
        forest = RandomForestClassifier(
            n_estimators=32, random_state=int(self.trial_seed()), n_jobs=1
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            forest.fit(np.stack(self._x), np.array(self._crashed))
        return forest

    def _pof(self, forest: RandomForestClassifier, params: dict[str, Any]) -> float:
        proba = forest.predict_proba(encode(self.space, params)[None, :])[0]
        return float(proba[list(forest.classes_).index(False)])
