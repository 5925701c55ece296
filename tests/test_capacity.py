import math

import numpy as np
import pytest

from sloguard.capacity import CapacitySearch, Probe
from sloguard.cli import evaluate


def _walk(search: CapacitySearch, capacity: float, flat_at: float | None = None) -> list:
    """Drive the search against a server that passes every rate up to ``capacity``.

    Past it attainment falls with the rate and the server falls behind; with ``flat_at`` the
    attainment is that at every rate and the server keeps up (failures not due to load).
    """
    probes: list[Probe] = []
    while (rate := search.next_rate(probes)) is not None:
        if flat_at is not None:
            probes.append(Probe(rate, flat_at, kept_up=True))
        else:
            share = 0.95 if rate <= capacity else 0.85 * capacity / rate
            probes.append(Probe(rate, share, kept_up=rate <= capacity))
    return probes


def test_doubles_to_a_bracket_then_bisects_within_the_tolerance() -> None:
    search = CapacitySearch(start_rps=10.0, rel_tol=0.05, max_probes=20)
    probes = _walk(search, capacity=57.0)
    assert [p.rate for p in probes[:4]] == [10.0, 20.0, 40.0, 80.0]  # bracket (40, 80)
    passed = max(p.rate for p in probes if p.attainment >= 0.9)
    failed = min(p.rate for p in probes if p.attainment < 0.9 and p.rate > passed)
    assert passed <= 57.0 < failed <= passed * 1.05
    assert len(probes) <= 4 + 5  # log2(log(2) / log(1.05)) = 3.8 bisections


def test_halves_when_the_first_rate_fails_and_stops_at_the_limits() -> None:
    probes = _walk(CapacitySearch(start_rps=10.0, rel_tol=0.1, max_probes=20), capacity=1.5)
    assert [p.rate for p in probes[:4]] == [10.0, 5.0, 2.5, 1.25]
    assert max(p.rate for p in probes if p.attainment >= 0.9) <= 1.5
    below = _walk(CapacitySearch(start_rps=1.0, min_rps=0.25), capacity=0.01)
    assert [p.rate for p in below] == [1.0, 0.5, 0.25]  # no rate passes: capacity 0
    above = _walk(CapacitySearch(start_rps=100.0, max_rps=300.0), capacity=1e9)
    assert [p.rate for p in above] == [100.0, 200.0, 300.0]  # reported as 300, the ceiling
    capped = _walk(CapacitySearch(start_rps=1.0, max_probes=3, rel_tol=1e-6), capacity=1.7)
    assert len(capped) == 3


def test_stops_halving_when_a_lower_rate_does_not_raise_attainment() -> None:
    probes = _walk(CapacitySearch(start_rps=10.0), capacity=0.0, flat_at=0.8)
    assert [p.rate for p in probes] == [10.0, 5.0]
    # the same flat attainment from a server that fell behind: keep halving
    behind = [Probe(10.0, 0.02, kept_up=False), Probe(5.0, 0.02, kept_up=False)]
    assert CapacitySearch(start_rps=10.0).next_rate(behind) == 2.5


def test_capacity_on_the_simulator_is_the_highest_passing_rate() -> None:
    common = ["workload=chatbot", "objective=capacity", "capacity.rel_tol=0.1"]
    out = evaluate(common)
    m = out["metrics"]
    cap = m["capacity_rps"]
    probes = [
        (m[f"capacity/probe_{i}/rate_rps"], m[f"capacity/probe_{i}/attainment"])
        for i in range(int(m["capacity_probes"]))
    ]
    assert out["feasible"] and out["utility"] == cap and cap > 0
    assert (cap, m["attainment"]) in probes and m["attainment"] >= 0.9
    failing_above = min(r for r, share in probes if share < 0.9 and r > cap)
    assert failing_above <= cap * 1.1
    assert m["class/chat/attainment"] == m["attainment"]
    # a smaller batch cap serves fewer requests per second within the SLOs
    small = evaluate([*common, "knobs.max_num_seqs=4"])["metrics"]["capacity_rps"]
    assert 0 < small < cap / 2


def test_a_stopped_probe_fails_and_never_decides_the_flat_rule() -> None:
    search = CapacitySearch(start_rps=10.0, min_rps=0.5)
    stopped = Probe(5.0, 0.95, kept_up=False, stopped=True)  # only what had ended by then
    assert not search._passed(stopped)
    # halving: a stopped lower rate says nothing of whether attainment rose: halve on
    kept = Probe(10.0, 0.5, kept_up=True)
    assert search.next_rate([kept, stopped]) == 2.5
    assert search.next_rate([kept, Probe(5.0, 0.5, kept_up=True)]) is None  # flat: done
    # above a pass, a stopped probe is a failure that brackets the capacity
    assert search.next_rate([Probe(10.0, 0.95, kept_up=True), Probe(20.0, 0.5, stopped=True)])
    assert search.next_rate([Probe(10.0, 0.95), Probe(10.4, 0.5, stopped=True)]) is None


def test_when_a_probe_may_stop() -> None:
    from sloguard.workload import Workload

    workload = Workload.plain(8, 4, np.arange(11) * 0.5, 0)  # 11 arrivals over 5 s at 2 req/s
    search = CapacitySearch(start_rps=2.0, min_rps=0.25)
    assert search.stop_after([], 2.0, workload) == pytest.approx(1.5 * 10 / 2.0)  # behind
    assert search.stop_after([Probe(1.0, 0.95)], 2.0, workload) == 0.0  # a rate passed
    assert search.stop_after([Probe(1.0, 0.95, stopped=True)], 2.0, workload) > 0
    assert search.stop_after([], 0.25, workload) is None  # the lowest rate runs in full
    off = CapacitySearch(start_rps=2.0, stop_early=False)
    assert off.stop_after([Probe(1.0, 0.95)], 2.0, workload) is None


@pytest.mark.parametrize(
    "overrides",
    [
        ["workload=chatbot"],
        ["workload=coding", "knobs.max_num_seqs=12"],
        ["workload=reasoning", "backend.scheduler=slos-serve", "backend.spec_decode.enabled=true",
         "knobs.max_num_seqs=16"],
        ["model=llama-3.1-8b", "hardware=l4-24gb", "workload=chatbot", "space.repair=false",
         "knobs.max_num_seqs=48"],
    ],
)  # fmt: skip
def test_stopping_failed_probes_early_finds_the_same_capacity(overrides) -> None:
    common = [*overrides, "objective=capacity", "capacity.rel_tol=0.1"]
    ran = evaluate([*common, "capacity.stop_early=false"])
    out = evaluate(common)
    m, full = out["metrics"], ran["metrics"]
    n = int(m["capacity_probes"])
    rates = [m[f"capacity/probe_{i}/rate_rps"] for i in range(n)]
    assert rates == [full[f"capacity/probe_{i}/rate_rps"] for i in range(len(rates))]
    assert full["capacity_probes"] == n
    assert (out["utility"], out["feasible"]) == (ran["utility"], ran["feasible"])
    assert m["capacity_rps"] == full["capacity_rps"] and m["attainment"] == full["attainment"]
    stopped = [i for i in range(n) if m.get(f"capacity/probe_{i}/stopped_early")]
    assert stopped, "some probe failed and stopped early"
    for i in stopped:  # the most it could have reached is below the target, and above the truth
        assert full[f"capacity/probe_{i}/attainment"] <= m[f"capacity/probe_{i}/attainment"] < 0.9
    assert "capacity/probe_0/stopped_early" not in full


FOUR_L4 = ["model=llama-3.1-8b", "hardware=4xl4-24gb", "workload=chatbot", "capacity.rel_tol=0.1",
           "space.tensor_parallel_size=[1,2,4]", "space.data_parallel_size=[1,2,4]"]  # fmt: skip


@pytest.mark.parametrize(("tp", "dp"), [(1, 1), (2, 1), (1, 2), (2, 2), (1, 4)])
def test_capacity_per_gpu_is_the_capacity_over_the_layouts_gpus(tp: int, dp: int) -> None:
    knobs = [f"knobs.tensor_parallel_size={tp}", f"knobs.data_parallel_size={dp}"]
    whole = evaluate([*FOUR_L4, *knobs, "objective=capacity"])
    out = evaluate([*FOUR_L4, *knobs, "objective=capacity_per_gpu"])
    cap = whole["metrics"]["capacity_rps"]
    assert out["feasible"] and out["metrics"]["capacity_rps"] == cap > 0
    assert out["metrics"]["gpus"] == tp * dp
    per = out["metrics"]["capacity_per_gpu_rps"]
    assert out["utility"] == per == pytest.approx(cap / (tp * dp))


def test_the_simulators_replicas_count_as_gpus() -> None:
    common = ["workload=chatbot", "objective=capacity_per_gpu"]
    one = evaluate(common)["metrics"]
    two = evaluate([*common, "backend.replicas=2"])["metrics"]
    assert (one["gpus"], two["gpus"]) == (1, 2)
    assert two["capacity_per_gpu_rps"] == pytest.approx(two["capacity_rps"] / 2)


def test_an_infeasible_trial_keeps_its_shortfall_per_gpu() -> None:
    from sloguard.capacity import per_gpu
    from sloguard.result import TrialResult

    failed = TrialResult({}, metrics={"capacity_rps": 0.0}, utility=-0.3)
    assert per_gpu(failed, 4).utility == -0.3 and failed.metrics["capacity_per_gpu_rps"] == 0.0
    passed = TrialResult({}, metrics={"capacity_rps": 6.0}, feasible=True, utility=6.0)
    assert per_gpu(passed, 4).utility == 1.5 and passed.metrics["gpus"] == 4


@pytest.mark.parametrize(("tp", "dp"), [(1, 1), (2, 1), (2, 2), (1, 4)])
def test_gpus_for_a_rate_are_enough_replicas_of_the_layout(tp: int, dp: int) -> None:
    knobs = [f"knobs.tensor_parallel_size={tp}", f"knobs.data_parallel_size={dp}"]
    target = 30.0
    whole = evaluate([*FOUR_L4, *knobs, "objective=capacity"])["metrics"]
    out = evaluate(
        [*FOUR_L4, *knobs, "objective=gpus_for_rate", f"capacity.target_rps={target:g}"]
    )
    m = out["metrics"]
    probes = [
        (m[f"capacity/probe_{i}/rate_rps"], m[f"capacity/probe_{i}/attainment"] >= 0.9
         and not m.get(f"capacity/probe_{i}/stopped_early"))
        for i in range(int(m["capacity_probes"]))
    ]  # fmt: skip
    assert max(rate for rate, _ in probes) <= target  # one server passing it needs no more GPUs
    # the copies are exact: k serve the target (a rate of target / k passed), k - 1 do not
    k = int(m["replicas_needed"])
    assert any(ok and rate >= target / k * (1 - 1e-9) for rate, ok in probes)
    if k > 1:
        assert any(not ok and rate <= target / (k - 1) * (1 + 1e-9) for rate, ok in probes)
    # never more than the whole capacity search says (it stops within its 10% tolerance)
    assert k <= math.ceil(target / whole["capacity_rps"])
    assert m["gpus"] == tp * dp and m["gpus_needed"] == tp * dp * k and out["feasible"]
    per = m["target_per_gpu_rps"]
    assert out["utility"] == per == pytest.approx(target / (tp * dp * k))


def test_a_gpus_for_rate_search_bisects_over_the_rates_one_copy_fewer_would_need() -> None:
    search = CapacitySearch(start_rps=40.0, max_rps=40.0, serve_rps=40.0)
    probes = [Probe(40.0, 0.5, True), Probe(20.0, 0.6, True), Probe(10.0, 0.95, True)]
    assert search.next_rate(probes) == pytest.approx(40 / 3)  # 3 copies, or 4?
    assert search.next_rate([*probes, Probe(40 / 3, 0.95, True)]) is None  # 3 (20 failed)
    assert search.next_rate([*probes, Probe(40 / 3, 0.5, True)]) is None  # 4
    assert search.next_rate([Probe(40.0, 0.95, True)]) is None  # one server serves it
    wide = [Probe(40.0, 0.5, True), Probe(1.0, 0.95, True)]  # 2 to 40 copies: the middle
    assert search.next_rate(wide) == pytest.approx(40 / 6)


def test_gpus_for_a_rate_count_whole_replicas_and_none_without_capacity() -> None:
    from sloguard.capacity import gpus_for_rate
    from sloguard.result import TrialResult

    def passed(capacity: float) -> TrialResult:
        return TrialResult({}, metrics={"capacity_rps": capacity}, feasible=True, utility=capacity)

    exact = gpus_for_rate(passed(0.1), 2, 3 * 0.1)  # 3 * 0.1 / 0.1 is 3.0000000000000004
    assert exact.metrics["replicas_needed"] == 3 and exact.metrics["gpus_needed"] == 6
    over = gpus_for_rate(passed(10.01), 2, 30.0)
    assert over.metrics["gpus_needed"] == 6 and over.utility == 5.0
    under = gpus_for_rate(passed(9.99), 2, 30.0)
    assert under.metrics["gpus_needed"] == 8 and under.utility == 3.75
    failed = gpus_for_rate(TrialResult({}, metrics={"capacity_rps": 0.0}, utility=-0.3), 4, 30.0)
    assert failed.utility == -0.3 and not failed.feasible
    assert failed.metrics["target_per_gpu_rps"] == 0.0 and "gpus_needed" not in failed.metrics


def test_a_startup_crash_ends_the_search_as_the_trials_crash() -> None:
    out = evaluate(["workload=chatbot", "objective=capacity", "space.repair=false",
                    "knobs.gpu_memory_utilization=0.05"])  # fmt: skip
    assert out["crash"]["category"] == "oom" and out["utility"] is None
    assert out["metrics"]["capacity_probes"] == 1 and out["metrics"]["capacity_rps"] == 0


def test_a_server_that_fails_before_any_load_is_the_trials_crash() -> None:
    from sloguard.capacity import search_capacity
    from sloguard.crash_classifier import CrashCategory, CrashInfo
    from sloguard.result import TrialResult
    from sloguard.workload import Workload

    crash = CrashInfo(CrashCategory.OOM, "no_kv_cache_memory", "ValueError: No available memory")

    def serve(next_workload):  # a real backend: the launch fails before it asks for a load
        return [TrialResult({"max_num_seqs": 8}, crash=crash)]

    workload = Workload.plain(8, 4, [0.0, 0.5, 1.0], 0)
    result = search_capacity(CapacitySearch(start_rps=2.0), workload, serve)
    assert result.crash is crash and result.utility is None and not result.feasible
    assert result.metrics == {"capacity_rps": 0.0, "capacity_probes": 0.0}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["objective=fastest"], "objective='fastest' is not known; choose one of: goodput"),
        (["objective=capacity", "workload=chat"], "objective=capacity needs open-loop arrivals"),
        (["objective=capacity_per_gpu", "workload=chat"],
         "objective=capacity_per_gpu needs open-loop arrivals"),
        (["objective=gpus_for_rate", "workload=chatbot"],
         "objective=gpus_for_rate needs capacity.target_rps, the request rate to serve"),
        (["objective=gpus_for_rate", "workload=chatbot", "capacity.target_rps=2000"],
         "capacity.target_rps=2000.0 is above capacity.max_rps=1000.0, the highest rate a "
         "search tries; raise capacity.max_rps"),
        (["objective=gpus_for_rate", "workload=chatbot", "capacity.target_rps=0"],
         "capacity.target_rps=0.0 is invalid; it must be a finite number > 0"),
        (["objective=capacity", "workload=chatbot", "capacity.max_rps=0.01"],
         "capacity.max_rps=0.01 is invalid"),
        (["slo.attainment_target=1.5"], "slo.attainment_target=1.5 is invalid; it must be a"),
    ],
)  # fmt: skip
def test_bad_objective_or_capacity_settings_are_one_clear_error(overrides, message) -> None:
    from sloguard.exceptions import ConfigError

    with pytest.raises(ConfigError) as err:
        evaluate(overrides)
    assert message in str(err.value) and "\n" not in str(err.value)
