from __future__ import annotations

import numpy as np
import pytest

from sloguard.optimizer import RandomOptimizer, TBAOptimizer, WarmStart
from sloguard.space import SearchSpace
from tests.optimizer_tests.test_optimizers import _crashes, _score


@pytest.fixture
def space(compose) -> SearchSpace:
    return SearchSpace.from_config(compose().space)


def test_the_given_configurations_go_first_then_the_inner_optimizer(space) -> None:
    rng = np.random.default_rng(0)
    first = [space.sample(rng) for _ in range(2)]
    inner = RandomOptimizer(space, seed=1)
    opt = WarmStart(inner, first)
    asked = []
    for _ in range(4):
        params = opt.ask()
        asked.append((params, opt.phase))
        opt.tell(params, _score(params))
    assert [p for p, _ in asked[:2]] == first
    assert [phase for _, phase in asked] == ["prior", "prior", "random", "random"]
    assert inner.n_told == 4  # the inner optimizer learns from the first trials too


def test_a_given_configuration_running_elsewhere_is_not_repeated(space) -> None:
    first = [space.complete({})]
    opt = WarmStart(RandomOptimizer(space, seed=1), first)
    assert opt.ask(0, running=[first[0]]) != first[0]


def test_a_primed_tba_avoids_where_the_prior_crashed(space) -> None:
    """The prior says eager mode crashes; TBA's surrogate learns it before its first trial."""
    rng = np.random.default_rng(5)
    history = [(p, _score(p)) for p in (space.sample(rng) for _ in range(40))]
    cold = sum(_crashes(TBAOptimizer(space, seed=s, budget=10), 10) for s in range(3))
    primed = 0
    for s in range(3):
        tba = TBAOptimizer(space, seed=s, budget=10)
        tba.prime(history)
        primed += _crashes(tba, 10)
    assert primed < cold
    assert primed <= 3
