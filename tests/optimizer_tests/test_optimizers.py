from __future__ import annotations

import pytest

from sloguard.config import OPTIMIZER_NAMES
from sloguard.crash_classifier import CrashCategory, CrashInfo
from sloguard.optimizer import OPTIMIZERS, create_optimizer
from sloguard.result import TrialResult
from sloguard.space import SearchSpace


def _score(params: dict) -> TrialResult:
    """A synthetic objective: more seqs is better, eager crashes."""
    if params["enforce_eager"]:
        return TrialResult(params, crash=CrashInfo(CrashCategory.OOM, "x", "CUDA out of memory"))
    return TrialResult(params, feasible=True, utility=float(params["max_num_seqs"]))


def _crashes(opt, n: int) -> int:
    """Crashes among ``n`` asks of ``opt`` on :func:`_score`."""
    crashed = 0
    for _ in range(n):
        params = opt.ask()
        result = _score(params)
        crashed += result.crash is not None
        opt.tell(params, result)
    return crashed


def test_config_knows_every_optimizer_by_name() -> None:
    """Validation checks names from config (no optimizer library loaded): the same set."""
    assert tuple(OPTIMIZERS) == OPTIMIZER_NAMES


@pytest.fixture
def space(compose) -> SearchSpace:
    return SearchSpace.from_config(compose().space)


def _asks(name: str, n: int) -> int:
    """``n`` asks, fewer for the GP (each of its asks refits it; startup is 5 random trials)."""
    return min(n, 8) if name == "constrained-bo" else n


def _make(name: str, space: SearchSpace, seed: int, compose):
    return create_optimizer(compose(f"optimizer={name}").optimizer, space, seed, budget=15)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_proposals_respect_the_space_and_its_condition(name, space, compose) -> None:
    opt = _make(name, space, 0, compose)
    for _ in range(_asks(name, 25)):
        params = opt.ask()
        assert set(params) <= set(space.knobs)
        assert all(space.knobs[k].contains(v) for k, v in params.items())
        assert ("enable_chunked_prefill" in params) == (not params["enforce_eager"])
        opt.tell(params, _score(params))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_same_seed_same_proposals(name, space, compose) -> None:
    runs = []
    for _ in range(2):
        opt, seen = _make(name, space, 7, compose), []
        for _ in range(_asks(name, 12)):
            params = opt.ask()
            opt.tell(params, _score(params))
            seen.append(params)
        runs.append(seen)
    assert runs[0] == runs[1]
    if name != "grid":  # the auto_tune grid is deterministic by design
        other, seen = _make(name, space, 8, compose), []
        for _ in range(3):  # tba starts from vLLM's defaults whatever the seed; then it differs
            params = other.ask()
            other.tell(params, _score(params))
            seen.append(params)
        assert seen != runs[0][:3]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_replayed_history_resumes_exactly(name, space, compose) -> None:
    straight, history = _make(name, space, 3, compose), []
    for _ in range(_asks(name, 10)):
        params = straight.ask()
        straight.tell(params, _score(params))
        history.append(params)
    expected_next = straight.ask()
    resumed = _make(name, space, 3, compose)
    for params in history:
        resumed.tell(params, _score(params))
    assert resumed.ask() == expected_next


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_survives_a_history_of_only_crashes(name, space, compose) -> None:
    opt = _make(name, space, 1, compose)
    crash = CrashInfo(CrashCategory.CUDA, "x", "CUDA error")
    for _ in range(12):
        params = opt.ask()
        opt.tell(params, TrialResult(params, crash=crash))
    assert set(opt.ask()) <= set(space.knobs)


@pytest.mark.parametrize(
    ("name", "trials", "late_from"), [("tpe", 40, 25), ("constrained-bo", 20, 12)]
)
def test_model_based_samplers_learn_from_results(name, trials, late_from, space, compose) -> None:
    """After their random start TPE and the GP concentrate where utility is high (many seqs, no
    eager)."""
    opt = _make(name, space, 0, compose)
    late = []
    for i in range(trials):
        params = opt.ask()
        opt.tell(params, _score(params))
        if i >= late_from:
            late.append(params)
    assert sum(not p["enforce_eager"] for p in late) >= 0.75 * len(late)
    assert sum(p["max_num_seqs"] for p in late) / len(late) > 50  # random mean is ~36


@pytest.mark.parametrize("name", ["tba", "tba-tpe"])
def test_bound_jump_reaches_the_annealer(name, space, compose) -> None:
    cfg = compose(f"optimizer={name}", "optimizer.bound_jump=0.4").optimizer
    opt = create_optimizer(cfg, space, 0, budget=15)
    assert getattr(opt, "tba", opt).bound_jump == 0.4
