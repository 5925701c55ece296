"""The one adapter: optimizers rebuilt from a study's stored trials, aware of running ones."""

from __future__ import annotations

import pytest

from sloguard.crash_classifier import CrashCategory, CrashInfo
from sloguard.optimizer import OPTIMIZERS, create_optimizer
from sloguard.result import TrialRecord, TrialResult
from sloguard.space import SearchSpace
from sloguard.study import Proposer


def _result(params: dict) -> TrialResult:
    if params["enforce_eager"] and params["max_num_seqs"] > 64:
        return TrialResult(params, crash=CrashInfo(CrashCategory.OOM, "x", "CUDA out of memory"))
    return TrialResult(params, feasible=True, utility=float(params["max_num_seqs"]))


@pytest.fixture
def make(compose):
    cfg = compose()
    space = SearchSpace.from_config(cfg.space)

    def _make(name: str, seed: int = 3):
        optimizer_cfg = compose(f"optimizer={name}").optimizer
        return lambda: create_optimizer(optimizer_cfg, space, seed, 12)

    return _make


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_a_cached_proposer_agrees_with_one_rebuilt_for_every_ask(name, make) -> None:
    cached, history = Proposer(make(name)), []
    for number in range(8 if name == "constrained-bo" else 10):  # the GP refits on each ask
        params, phase = cached.propose(number, history, running=[])
        assert Proposer(make(name)).propose(number, history, running=[]) == (params, phase)
        history.append(TrialRecord(number, params, _result(params), phase))


@pytest.mark.parametrize("name", ["tpe", "tba-tpe"])
def test_trials_finishing_out_of_order_give_what_a_fresh_optimizer_gives(name, make) -> None:
    proposer, history = Proposer(make(name)), []
    for number in range(6):
        params, phase = proposer.propose(number, history, running=[])
        history.append(TrialRecord(number, params, _result(params), phase))
    history[3], history[4] = history[4], history[3]  # 4 finished before 3 elsewhere
    assert proposer.propose(6, history, []) == Proposer(make(name)).propose(6, history, [])


@pytest.mark.parametrize("name", ["tba", "tba-tpe", "grid"])
def test_a_configuration_running_elsewhere_is_not_proposed_again(name, make) -> None:
    proposer, history = Proposer(make(name)), []
    for number in range(4):
        params, phase = proposer.propose(number, history, running=[])
        history.append(TrialRecord(number, params, _result(params), phase))
    alone, _ = Proposer(make(name)).propose(4, history, running=[])
    beside, _ = Proposer(make(name)).propose(4, history, running=[alone])
    assert beside != alone


def test_tpe_lies_about_running_trials(make) -> None:
    """TPE's constant liar: the same history with trials in flight gives another proposal."""
    proposer, history = Proposer(make("tpe")), []
    for number in range(8):
        params, phase = proposer.propose(number, history, running=[])
        history.append(TrialRecord(number, params, _result(params), phase))
    best = max(history, key=lambda r: r.result.utility or 0).params
    alone, _ = Proposer(make("tpe")).propose(8, history, running=[])
    beside, _ = Proposer(make("tpe")).propose(8, history, running=[best, alone])
    assert beside != alone
