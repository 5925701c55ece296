"""Replicas behind a router."""

from __future__ import annotations

from collections import deque
from types import SimpleNamespace

import pytest

from sloguard.backends.sim import ROUTERS, ServingSettings
from sloguard.backends.sim._router import Router
from sloguard.config import ROUTER_NAMES
from tests.backends_tests.sim_tests.conftest import Serve


def test_the_router_names_are_the_configs() -> None:
    assert tuple(ROUTERS) == ROUTER_NAMES


@pytest.mark.parametrize("router", [r for r in ROUTER_NAMES if r != "dp-balance"])
@pytest.mark.parametrize("scheduler", ["vllm", "slos-serve"])
def test_no_replica_is_given_more_than_its_kv_holds(
    serve: Serve, router: str, scheduler: str
) -> None:
    over: list[tuple[int, int]] = []
    place = Router._place

    def checked(self: Router, rid: int):
        engine = place(self, rid)
        if engine is not None:
            i = self.engines.index(engine)
            if self.load[i] > engine.total_blocks:
                over.append((rid, i))
        return engine

    Router._place = checked  # type: ignore[method-assign]
    try:
        load = ["workload=mixed", "workload.num_requests=300", "workload.request_rate=80"]
        serving = ServingSettings(scheduler=scheduler, replicas=3, router=router)
        run, _ = serve(load, serving, num_blocks=400)  # ~6,400 tokens of KV per replica
    finally:
        Router._place = place  # type: ignore[method-assign]
    assert over == []
    assert all(r.success for r in run.records)  # those held at the router were placed later
    assert sum(s.requests for s in run.replicas) == 300 and min(s.requests for s in run.replicas)


def test_round_robin_takes_turns_and_rounds_stay_together(serve: Serve) -> None:
    load = ["workload=tool-calling", "workload.num_requests=60"]
    run, workload = serve(load, ServingSettings(replicas=2, router="round-robin"))
    counts = [s.requests for s in run.replicas]
    assert sum(counts) == len(workload) and abs(counts[0] - counts[1]) <= len(workload) // 3
    # later rounds ran where the round before did: their prompts were found in the cache
    alone, _ = serve(load)
    assert run.prefix_cache_hit_rate == pytest.approx(alone.prefix_cache_hit_rate, abs=0.02)


def test_two_replicas_serve_twice_the_rate_as_well_as_one_serves_its_own(serve: Serve) -> None:
    load = ["workload=mixed", "workload.request_rate=24"]
    one, _ = serve([*load, "workload.num_requests=300"])
    two, _ = serve(
        ["workload=mixed", "workload.request_rate=48", "workload.num_requests=600"],
        ServingSettings(replicas=2, router="least-loaded"),
    )

    def mean_ttft(run) -> float:
        return sum(r.token_times[0] - r.send_time for r in run.records) / len(run.records)

    assert all(r.success for r in one.records + two.records)
    assert mean_ttft(two) <= 1.2 * mean_ttft(one)


def test_dp_balance_picks_the_fewest_in_flight_unless_it_queues_on_a_full_engine() -> None:
    engines = [SimpleNamespace(waiting=deque(), free_blocks=100, total_blocks=100)
               for _ in range(3)]  # fmt: skip
    reqs = SimpleNamespace(workload=SimpleNamespace(follows=None))
    router = ROUTERS["dp-balance"](engines, reqs)  # type: ignore[arg-type]

    def at(rid: int) -> int:
        engine = router(rid)
        return next(i for i, e in enumerate(engines) if e is engine)

    assert [at(rid) for rid in range(3)] == [0, 1, 2]  # ties: in turn
    router.done(1)
    assert at(3) == 1  # the fewest in flight
    assert [at(rid) for rid in (4, 5, 6)] == [1, 2, 0]  # two in flight on each again
    router.done(4)  # one of engine 1's
    # engine 1 has the fewest in flight (1), but 2 waiting at 90% KV: 1 + 2 x 6 x 0.4 = 5.8
    engines[1].free_blocks, engines[1].waiting = 10, deque([8, 9])
    assert at(7) != 1
    engines[1].waiting = deque()  # no queue, no penalty
    assert at(8) == 1
    assert not router.held  # it never holds a request back


def test_dp_balance_spreads_a_burst_over_the_engines(serve: Serve) -> None:
    load = ["workload=mixed", "workload.num_requests=300", "workload.request_rate=80"]
    run, _ = serve(load, ServingSettings(replicas=3, router="dp-balance"), num_blocks=400)
    counts = [s.requests for s in run.replicas]
    assert sum(counts) == 300 and max(counts) - min(counts) <= 30, counts
    assert all(r.success for r in run.records)
