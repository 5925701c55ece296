from __future__ import annotations

import pytest

from sloguard.exceptions import ConfigError
from sloguard.prior import simulate_prior
from sloguard.study import run_study

SMALL = ("workload=smoke", "progress=false", "prior.trials=12")


def test_no_prior_simulates_nothing(compose) -> None:
    assert simulate_prior(compose()) is None


def test_the_prior_is_the_simulated_study_s_best_feasible_configurations(compose) -> None:
    cfg = compose(*SMALL, "prior=sim", "optimizer=random", "prior.top_k=4")
    prior = simulate_prior(cfg)
    assert prior is not None and len(prior.records) == 12
    by_params = {str(r.params): r.result for r in prior.records}
    results = [by_params[str(p)] for p in prior.top]
    assert 1 <= len(prior.top) <= 4
    assert all(r.feasible for r in results)
    utilities = [r.utility for r in results]
    assert utilities == sorted(utilities, reverse=True)
    feasible = [r.result.utility for r in prior.records if r.result.feasible]
    assert utilities[0] == max(feasible)
    assert len({str(p) for p in prior.top}) == len(prior.top)
    again = simulate_prior(cfg)
    assert again is not None and again.top == prior.top  # every worker computes the same prior


def test_the_prior_runs_on_the_simulator_whatever_the_study_s_backend(compose) -> None:
    """A real-backend study's prior launches no server: the sim evaluates it in seconds."""
    cfg = compose(
        *SMALL,
        "prior=sim",
        "backend=vllm-cpu",
        "model=tiny-random",
        "hardware=cpu",
        "space=cpu-small",
    )
    prior = simulate_prior(cfg)
    assert prior is not None and len(prior.records) == 12
    assert all("startup_s" not in r.result.metrics for r in prior.records)
    assert prior.top


def test_the_prior_speculates_with_the_studys_acceptance_rate(compose) -> None:
    from sloguard.prior import _on_simulator

    cfg = compose("prior=sim", "backend=vllm-cpu", "model=tiny-random", "hardware=cpu",
                  "space=cpu-small", "backend.spec_decode.acceptance_rate=0.35")  # fmt: skip
    sim = _on_simulator(cfg).backend
    assert sim.name == "sim" and sim.spec_decode.acceptance_rate == 0.35


def test_a_study_with_the_prior_starts_with_its_top_configurations(compose, study_env) -> None:
    cfg = compose(*SMALL, "prior=sim", "optimizer=tba-tpe", "budget=5", "prior.top_k=2")
    prior = simulate_prior(cfg)
    assert prior is not None and len(prior.top) == 2
    outcome = run_study(cfg)
    first = sorted(outcome.records, key=lambda r: r.number)
    assert [r.params for r in first[:2]] == list(prior.top)
    assert [r.phase for r in first[:2]] == ["prior", "prior"]
    assert all(r.phase != "prior" for r in first[2:])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("prior=bogus", "prior='bogus' is not known; choose one of: none, sim"),
        ("prior.trials=0", "prior.trials=0 is invalid"),
    ],
)
def test_a_bad_prior_is_one_clear_error(compose, override, message) -> None:
    with pytest.raises(ConfigError, match=message):
        compose(override)
