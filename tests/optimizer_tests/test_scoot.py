from __future__ import annotations

import pytest

from sloguard.optimizer import ScootOptimizer, TPEOptimizer
from sloguard.space import SearchSpace
from tests.optimizer_tests.test_optimizers import _crashes, _score


@pytest.fixture
def space(compose) -> SearchSpace:
    return SearchSpace.from_config(compose().space)


def test_the_threshold_rises_after_a_crash_and_falls_after_a_run(space) -> None:
    opt = ScootOptimizer(space, seed=0, pof_threshold=0.5, pof_step=0.1)
    eager = space.complete({"enforce_eager": True})
    graph = space.complete({"enforce_eager": False})
    opt.tell(eager, _score(eager))
    assert opt.threshold == pytest.approx(0.6)
    for _ in range(9):
        opt.tell(graph, _score(graph))
    assert opt.threshold == pytest.approx(0.1)  # held at its floor


def test_the_forest_screens_out_proposals_that_look_like_crashes(space) -> None:
    """Cold TPE learns nothing from crashes (they are failures); SCOOT's forest does."""
    tpe = sum(_crashes(TPEOptimizer(space, seed=s), 20) for s in range(3))
    scoot = sum(_crashes(ScootOptimizer(space, seed=s), 20) for s in range(3))
    assert scoot < tpe
