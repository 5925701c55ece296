"""SLOs-Serve's scheduler on the simulated engine."""

from __future__ import annotations

import numpy as np
import pytest

from sloguard.backends.sim import ServingSettings, SlosServeScheduler
from sloguard.backends.sim._engine import Engine
from sloguard.config import SpecDecodeConfig
from tests.backends_tests.sim_tests.conftest import Serve, attainment

LLAMA = ["model=llama-3.1-8b", "hardware=a100-40gb"]
SLOS = ServingSettings(scheduler="slos-serve")


def _tokens_per_s(run) -> float:
    return sum(len(r.token_times) for r in run.records) / run.duration_s


def test_one_loose_class_loses_no_throughput(serve: Serve) -> None:
    load = [*LLAMA, "workload=chatbot", "workload.num_requests=400", "workload.request_rate=30"]
    vllm, _ = serve(load)
    slos, _ = serve(load, SLOS)
    assert all(r.success for r in slos.records)
    assert _tokens_per_s(slos) >= 0.97 * _tokens_per_s(vllm)


@pytest.mark.parametrize("workload", ["coding", "mixed"])
def test_tight_tpot_classes_are_served_at_least_as_well(serve: Serve, workload: str) -> None:
    # above vLLM-style scheduling's capacity for these classes (50 ms TPOT tiers)
    load = [*LLAMA, f"workload={workload}", "workload.num_requests=400"]
    load.append("workload.request_rate=" + ("16" if workload == "coding" else "8"))
    vllm = attainment(*serve(load))
    slos = attainment(*serve(load, SLOS))
    assert vllm < 0.9 and slos >= vllm + 0.05


@pytest.mark.parametrize("seed", range(6))
def test_an_admission_never_makes_an_admitted_prompt_late(serve: Serve, seed: int) -> None:
    """In the predictor's own terms: prompts the plan had on time stay on time after it admits."""
    broken: list[tuple[float, set[int]]] = []
    admit = SlosServeScheduler.admit_pending

    def checked(self: SlosServeScheduler, engine: Engine) -> None:
        on_time = set(self.admitted) - self.late_prompts(engine)
        admit(self, engine)
        if on_time & self.late_prompts(engine):
            broken.append((engine.now, on_time & self.late_prompts(engine)))

    rng = np.random.default_rng(seed)
    rate = float(rng.uniform(4, 16))
    arrival = ["workload.arrival=gamma", f"workload.burstiness={rng.uniform(0.3, 1):.2f}"]
    load = [*LLAMA, "workload=mixed", f"workload.seed={seed}", f"workload.request_rate={rate}"]
    SlosServeScheduler.admit_pending = checked  # type: ignore[method-assign]
    try:
        run, _ = serve([*load, *arrival, "workload.num_requests=250"], SLOS, noise=0.0)
    finally:
        SlosServeScheduler.admit_pending = admit  # type: ignore[method-assign]
    assert run.replicas[0].best_effort > 0 or rate < 8  # the load did test admission
    assert broken == []


def test_without_noise_admitted_requests_meet_their_slos(serve: Serve) -> None:
    load = [*LLAMA, "workload=coding", "workload.num_requests=300", "workload.request_rate=24"]
    run, workload = serve(load, SLOS, noise=0.0)
    assert run.replicas[0].best_effort > 30  # overloaded: many were not admitted
    classes = workload.classes
    assert classes is not None
    best_effort = set(run.replicas[0].best_effort_ids)
    admitted = [i for i in range(len(run.records)) if i not in best_effort]
    missed = [
        i
        for i in admitted
        if not classes.meets_slo(i, run.records[i].send_time, run.records[i].token_times)
    ]
    assert len(missed) <= 0.01 * len(admitted)


def test_best_effort_requests_are_served_and_counted(serve: Serve) -> None:
    load = [*LLAMA, "workload=mixed", "workload.num_requests=300", "workload.request_rate=20"]
    soft, _ = serve(load, SLOS)
    hard, _ = serve(load, ServingSettings(scheduler="slos-serve", soft_admission=False))
    assert soft.replicas[0].best_effort > 0 and hard.replicas[0].best_effort == 0
    assert all(r.success for r in soft.records)  # best effort still finishes


def test_planner_time_is_measured(serve: Serve) -> None:
    run, _ = serve(["workload=mixed", "workload.num_requests=200"], SLOS)
    stats = run.replicas[0]
    assert 0 < stats.planner_ms_mean <= stats.planner_ms_max < 1000


def test_speculation_emits_the_same_tokens_in_fewer_steps(serve: Serve) -> None:
    load = ["workload=chat", "workload.num_requests=100"]
    plain, _ = serve(load)
    spec = SpecDecodeConfig(enabled=True, max_tokens=3, acceptance_rate=1.0, draft_ratio=0.0)
    fast, _ = serve(load, ServingSettings(spec=spec))

    def lengths(run) -> list[int]:
        return [len(r.token_times) for r in run.records]

    assert lengths(fast) == lengths(plain)
    assert fast.num_steps < 0.75 * plain.num_steps  # decodes emit 4 tokens a step
    half = SpecDecodeConfig(enabled=True, max_tokens=3, acceptance_rate=0.5)
    once, again = (serve(load, ServingSettings(spec=half))[0] for _ in range(2))
    assert once.num_steps == again.num_steps  # acceptance draws are seeded


def test_tighter_tiers_speculate_at_least_as_much() -> None:
    scheduler = SlosServeScheduler(spec_tokens=6, acceptance_rate=0.8)
    limit = 0.9 * 0.05 * scheduler._credited(3)
    tight, loose = scheduler._spec_for(0.05, limit, 6), scheduler._spec_for(0.1, limit, 6)
    assert tight >= loose and loose == 0
