from __future__ import annotations

from sloguard.evaluation import TrialStep, slo_from_config
from sloguard.optimizer import create_optimizer
from sloguard.space import SearchSpace


def test_an_untracked_run_asks_evaluates_and_tells_each_trial(compose) -> None:
    cfg = compose("workload=smoke", "optimizer=tba-tpe")
    space = SearchSpace.from_config(cfg.space)
    step = TrialStep.from_config(cfg, space, slo_from_config(cfg))
    optimizer = create_optimizer(cfg.optimizer, space, 3, 4)
    records = step.run_untracked(optimizer, 4)
    assert [r.number for r in records] == [0, 1, 2, 3]
    assert optimizer.n_told == 4 and all(r.result.metrics for r in records)
    again = step.run_untracked(create_optimizer(cfg.optimizer, space, 3, 4), 4)
    assert [r.params for r in again] == [r.params for r in records]  # (seed, number) decide
