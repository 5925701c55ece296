"""What makes the crash-aware optimizers crash-aware."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from optuna.trial import TrialState

from sloguard.crash_classifier import CrashCategory, CrashInfo
from sloguard.exceptions import ConfigError
from sloguard.optimizer import (
    ConstrainedBOOptimizer,
    GridOptimizer,
    TBAOptimizer,
    TBATPEOptimizer,
    TPEOptimizer,
    create_optimizer,
)
from sloguard.optimizer._surrogate import FeasibilitySurrogate
from sloguard.optimizer._tpe import crash_constraints, objective_value
from sloguard.result import TrialResult
from sloguard.space import SearchSpace

OOM = CrashInfo(CrashCategory.OOM, "no_kv_cache_memory", "No available memory")


@pytest.fixture
def space(compose) -> SearchSpace:
    return SearchSpace.from_config(compose().space)


def _crash(params) -> TrialResult:
    return TrialResult(params, crash=OOM)


def _ok(params, goodput: float = 100.0) -> TrialResult:
    return TrialResult(params, metrics={"goodput_tok_s": goodput}, feasible=True, utility=goodput)


def test_tba_never_proposes_a_blacklisted_subspace(space) -> None:
    opt = TBAOptimizer(space, seed=0, budget=60, n_initial=0)
    rng = np.random.default_rng(1)
    for _ in range(6):  # low utilisation keeps crashing
        params = space.sample(rng)
        params["gpu_memory_utilization"] = 0.61
        opt.tell(params, _crash(params))
    assert ("gpu_memory_utilization", 0) in {
        k[0] if len(k) == 1 else k[1] for k in opt.blacklist.blocked
    }
    for _ in range(40):
        params = opt.ask()
        assert not opt.blacklist.blocks(params)
        assert params["gpu_memory_utilization"] >= 0.6 + 0.35 / 4  # outside the lowest quarter
        opt.tell(params, _ok(params))


def test_a_subspace_with_a_feasible_trial_is_not_blacklisted(space) -> None:
    opt = TBAOptimizer(space, seed=0, budget=20)
    params = space.complete({"gpu_memory_utilization": 0.61})
    opt.tell(params, _ok(params))
    for _ in range(5):
        opt.tell(params, _crash(params))
    assert not opt.blacklist.blocks(params)


def test_surrogate_is_trusted_only_past_its_out_of_bag_gate() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(60, 3))
    separable = (x[:, 0] > 0.5).astype(int) * 2  # crash below 0.5, feasible above
    surrogate = FeasibilitySurrogate(oob_gate=0.7)
    assert surrogate.fit(x, separable, seed=0)
    p_crash, p_feasible = surrogate.predict(np.array([[0.1, 0.5, 0.5], [0.9, 0.5, 0.5]]))
    assert p_crash[0] > 0.8 and p_feasible[1] > 0.8
    noise = rng.integers(0, 3, 60)
    assert not surrogate.fit(x, noise, seed=0)
    assert surrogate.oob_score < 0.7
    p_crash, p_feasible = surrogate.predict(x[:2])
    assert p_crash.tolist() == [0.0, 0.0] and p_feasible.tolist() == [1.0, 1.0]


def test_temperature_follows_the_remaining_budget(space) -> None:
    opt = TBAOptimizer(space, seed=0, budget=10, t0=0.5)
    temps = []
    for _ in range(10):
        temps.append(opt.temperature)
        params = opt.ask()
        opt.tell(params, _ok(params))
    assert temps[0] == 0.5 and temps == sorted(temps, reverse=True)
    assert opt.temperature == 0.0


def test_tba_can_start_from_vllms_defaults(space) -> None:
    """start=defaults: the first trial is the space's defaults, once; a busy worker gets a draw."""
    defaults = space.complete({})
    opt = TBAOptimizer(space, seed=0, budget=10, start="defaults")
    other = TBAOptimizer(space, seed=0, budget=10, start="defaults")
    first = opt.ask()
    assert first == defaults
    assert other.ask(0, running=[defaults]) != defaults  # another worker already runs them
    opt.tell(first, _ok(first))
    asked = [opt.ask() for _ in range(3)]
    assert defaults not in asked
    assert TBAOptimizer(space, seed=0, budget=10, start="random").ask() != defaults


def test_tba_tpe_hands_off_with_every_trial_as_a_warm_start(space) -> None:
    opt = TBATPEOptimizer(space, seed=0, budget=10, handoff=0.4)
    phases = []
    for i in range(10):
        params = opt.ask()
        phases.append(opt.phase)
        opt.tell(params, _crash(params) if i % 2 else _ok(params, 10.0 * i))
    assert phases == ["explore"] * 4 + ["exploit"] * 6
    trials = opt.tpe.study.trials
    assert len(trials) == 10 and all(t.state is TrialState.COMPLETE for t in trials)
    crashed = [t for t in trials if t.constraints["violation"] == 100.0]
    assert len(crashed) == 5 and all(t.value == 0.0 for t in crashed)


@pytest.mark.parametrize("anneal", ["budget", "handoff"])
def test_tba_tpe_anneals_over_the_budget_or_its_own_phase(space, anneal) -> None:
    opt = TBATPEOptimizer(space, seed=0, budget=20, handoff=0.4, anneal=anneal)
    alone = TBAOptimizer(space, seed=0, budget=20)
    assert opt.tba.budget == (20 if anneal == "budget" else 8)
    proposed, by_tba = [], []
    for i in range(8):
        params, own = opt.ask(), alone.ask()
        proposed.append(params)
        by_tba.append(own)
        for o, p in ((opt, params), (alone, own)):
            o.tell(p, _crash(p) if i % 3 == 1 else _ok(p, 10.0 * (i % 4)))
    # over the budget, the exploring phase is TBA itself; over its phase, it cools faster
    assert (proposed == by_tba) is (anneal == "budget")


@pytest.mark.parametrize(("anneal", "span"), [("budget", 20), ("handoff", 8)])
def test_tba_tpe_takes_its_anneal_from_config(compose, space, anneal, span) -> None:
    cfg = compose("optimizer=tba-tpe", f"optimizer.anneal={anneal}").optimizer
    opt = create_optimizer(cfg, space, 0, budget=20)
    assert isinstance(opt, TBATPEOptimizer) and opt.tba.budget == span


def test_tba_tpe_refuses_an_unknown_anneal(space) -> None:
    with pytest.raises(ValueError, match="'sideways'"):
        TBATPEOptimizer(space, seed=0, budget=20, anneal="sideways")


def test_cold_tpe_learns_nothing_from_crashes(space) -> None:
    cold, aware = TPEOptimizer(space, 0), TPEOptimizer(space, 0, crash_aware=True)
    for opt in (cold, aware):
        params = opt.ask()
        opt.tell(params, _crash(params))
    assert cold.study.trials[0].state is TrialState.FAIL
    assert aware.study.trials[0].state is TrialState.COMPLETE
    assert aware.study.trials[0].constraints == {"violation": 100.0}


def test_grid_steps_utilisation_down_after_oom_like_auto_tune(space) -> None:
    opt = GridOptimizer(
        space,
        0,
        max_num_seqs=(32, 64),
        max_num_batched_tokens=(512, 1024),
        util_start=0.95,
        util_step=0.05,
    )
    first = opt.ask()
    assert (first["max_num_seqs"], first["max_num_batched_tokens"]) == (32, 512)
    assert first["gpu_memory_utilization"] == 0.95
    opt.tell(first, _crash(first))
    retry = opt.ask()
    assert (retry["max_num_seqs"], retry["gpu_memory_utilization"]) == (32, 0.9)
    opt.tell(retry, _ok(retry))
    after = opt.ask()
    assert (after["max_num_seqs"], after["max_num_batched_tokens"]) == (32, 1024)
    assert after["gpu_memory_utilization"] == 0.95


def test_constrained_bo_needs_torch(space, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # how Python marks a module as missing
    with pytest.raises(ConfigError, match=r"needs torch, which is not installed.*\[bo\]"):
        ConstrainedBOOptimizer(space, 0)


def test_constrained_samplers_model_the_objectives_own_figure() -> None:
    goodput = _ok({}, 250.0)
    capacity = TrialResult({}, metrics={"goodput_tok_s": 900.0, "capacity_rps": 4.5},
                           feasible=True, utility=4.5)  # fmt: skip
    missed = TrialResult({}, metrics={"goodput_tok_s": 300.0, "capacity_rps": 0.0}, utility=-0.2)
    on_four = {"goodput_tok_s": 900.0, "capacity_rps": 4.5, "capacity_per_gpu_rps": 1.125}
    per_gpu = TrialResult({}, metrics=on_four, feasible=True, utility=1.125)
    values = [objective_value(r) for r in (goodput, capacity, per_gpu, missed, _crash({}))]
    assert values == [250.0, 4.5, 1.125, 0.0, 0.0]  # a feasible trial's value is its utility
    assert crash_constraints(missed) == {"violation": 0.2}
