from __future__ import annotations

import pytest

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


def test_a_schedule_longer_than_the_load_limit_is_refused(compose) -> None:
    """Every trial would time out whatever its knobs: refused with the numbers, not run."""
    from sloguard.evaluation import check_load_fits, workload_from_config
    from sloguard.exceptions import ConfigError

    cfg = compose("workload=azure-code", "workload.num_requests=1000")
    with pytest.raises(ConfigError, match=r"1000 requests arrive over 722 s, longer than the "
                       r"load-phase limit backend.timeout_s=600"):  # fmt: skip
        check_load_fits(cfg, workload_from_config(cfg))
    for fits in (compose("workload=azure-code"), compose("workload=azure-code",
                 "workload.num_requests=1000", "backend.timeout_s=900")):  # fmt: skip
        check_load_fits(fits, workload_from_config(fits))
