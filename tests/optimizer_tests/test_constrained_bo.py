from __future__ import annotations

import numpy as np
import pytest
from optuna._gp.search_space import SearchSpace as GPSpace
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from sloguard.optimizer._constrained_bo import _BatchedGPSampler, _coordinate_ascent


class _Peak:
    """An acquisition function with one peak: -(squared distance to ``target``), normalised."""

    def __init__(self, space: GPSpace, target: np.ndarray) -> None:
        self.search_space = space
        self.target = target

    def eval_acqf_no_grad(self, x: np.ndarray) -> np.ndarray:
        return -((x - self.target) ** 2).sum(axis=-1)


def test_coordinate_ascent_reaches_the_peak_on_a_wide_integer_knob() -> None:
    """Thousands of integer values (log scale), a float and a categorical: the search lands on
    the peak's own values, not near them."""
    space = GPSpace(
        {
            "tokens": IntDistribution(512, 8192, log=True),
            "util": FloatDistribution(0.6, 0.95),
            "eager": CategoricalDistribution([True, False]),
        }
    )
    tokens = space.get_choices_of_discrete_params()[0]
    target = np.array([tokens[4321], 0.3712, 1.0])
    starts = np.random.default_rng(0).uniform(size=(4, 3))
    starts[:, 2] = 0.0
    best = _coordinate_ascent(_Peak(space, target), starts)
    assert best[0] == tokens[4321]
    assert best[1] == pytest.approx(0.3712, abs=1e-3)
    assert best[2] == 1.0
    assert space.get_unnormalized_param(best)["tokens"] == 512 + 4321


class _PartlyUndefined(_Peak):
    """:class:`_Peak` where the first coordinate is below 0.5: NaN there, -inf past 0.9."""

    def eval_acqf_no_grad(self, x: np.ndarray) -> np.ndarray:
        values = super().eval_acqf_no_grad(x)
        values = np.where(x[..., 0] < 0.5, np.nan, values)
        return np.where(x[..., 0] > 0.9, -np.inf, values)


def test_acquisition_search_survives_nan_and_infinite_values() -> None:
    """Undefined acquisition values give no start point (Optuna's roulette skips them too)."""
    space = GPSpace({"a": FloatDistribution(0.0, 1.0), "b": FloatDistribution(0.0, 1.0)})
    target = np.array([0.7, 0.2])
    best = _BatchedGPSampler(seed=0)._optimize_acqf(_PartlyUndefined(space, target), None)
    assert best == pytest.approx(target, abs=1e-3)
