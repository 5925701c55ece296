"""Early abort: a window stops only once its SLO verdict is certainly infeasible."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from sloguard.backends import create_backend
from sloguard.early_abort import hopeless, truncate
from sloguard.evaluation import slo_from_config, workload_from_config
from sloguard.load_generator import ABORT_ERROR, LoadSettings, generate
from sloguard.request_class import RequestClasses
from sloguard.result import RequestRecord
from sloguard.slo_contract import SloContract
from sloguard.space import SearchSpace
from sloguard.testing import StubBehavior, start_stub
from sloguard.workload import Workload

SLO = SloContract(ttft_ms=100.0, itl_ms=50.0, percentile=99.0)


def _done(i: int, ttft_s: float, itl_s: float = 0.01, n: int = 4) -> RequestRecord:
    record = RequestRecord(i, 8, n, 0.0, 0.0)
    record.token_times = ttft_s + np.arange(n) * itl_s
    return record


def _window(n: int, slow: int, **kw: float) -> list[RequestRecord]:
    """``n`` requests, the first ``slow`` finished over the TTFT limit, the rest unsent."""
    records = [_done(i, 0.5, **kw) for i in range(slow)]
    return records + [RequestRecord(i, 8, 4, 0.0, -1.0) for i in range(slow, n)]


def test_misses_beyond_the_percentiles_share_of_the_whole_window_are_certain() -> None:
    # p99 of 300 requests leaves 3 of them; one more for interpolation, so 5 decide
    assert hopeless(_window(300, 4), SLO) is None
    assert "5 of 300 requests over TTFT 100 ms" in hopeless(_window(300, 5), SLO)
    # the percentile over the finished ones alone would already miss: not enough to stop
    assert hopeless(_window(1000, 5), SLO) is None


def test_failures_and_itl_gaps_count_against_the_same_share() -> None:
    records = _window(100, 0)
    for r in records[:2]:
        r.error = "http 500"
    assert "2 of 100 requests failed" in hopeless(records, SLO)
    gaps = [_done(i, 0.01, itl_s=0.2, n=2) for i in range(4)] + _window(100, 0)[4:]
    assert "4 of at most 292 token gaps over ITL" in hopeless(gaps, SLO)
    records = _window(300, 3)
    for r in records[3:6]:
        r.error = "reset"  # the percentile is over the 297 others: 2.97 (+1) of them may miss
    assert hopeless(records, SLO) is None
    records.append(_done(300, 0.5))
    assert "4 of 301 requests over TTFT 100 ms (p99 allows 2.98)" in hopeless(records, SLO)


def test_requests_cut_short_by_the_abort_are_not_failures() -> None:
    records = _window(100, 0)
    records[0].error = f"{ABORT_ERROR}: unfinished"
    assert hopeless(records, SLO) is None


def test_truncate_cuts_at_the_first_certain_moment() -> None:
    records = [_done(i, 0.05) for i in range(100)]
    for i, r in enumerate(records):
        r.send_time = i * 0.1
        r.token_times = r.token_times + r.send_time + (1.0 if i in (10, 20, 30) else 0.0)
    cut = truncate(records, SLO)
    assert cut is not None
    kept, at, reason = cut
    assert at == pytest.approx(4.08) and "3 of 100" in reason  # the third slow one decides
    assert {10, 20, 30} <= {r.request_id for r in kept}
    assert {r.request_id for r in kept} == {
        r.request_id for r in records if r.token_times[-1] <= at
    }
    assert 39 <= len(kept) <= 41
    assert truncate([*records[:-1], _done(99, 0.05)], SloContract(ttft_ms=5000)) is None


def _by_definition(
    records: list[RequestRecord], slo: SloContract, classes: RequestClasses | None
) -> tuple[float, str] | None:
    """The first completion time at which ``hopeless`` holds, checking every one in turn."""
    for end in sorted({float(r.token_times[-1]) for r in records if r.success}):
        reason = hopeless(records, slo, classes, until=end)
        if reason is not None:
            return end, reason
    return None


@pytest.mark.parametrize("with_classes", [False, True])
def test_truncate_finds_the_first_moment_hopeless_holds(with_classes: bool) -> None:
    rng = np.random.default_rng(7)
    slo = SloContract(ttft_ms=200.0, itl_ms=40.0, percentile=90.0, attainment_target=0.9)
    cuts = 0
    for _ in range(60):
        n = int(rng.integers(5, 80))
        slow = float(rng.uniform(0.01, 0.2))  # mean TTFT of the window: some never miss
        records = []
        for i in range(n):
            send = float(rng.uniform(0, 5))
            gaps = np.round(rng.exponential(slow / 5, int(rng.integers(1, 12))), 2)  # ties in ends
            record = RequestRecord(i, 8, len(gaps), send, send)
            record.token_times = send + np.round(rng.exponential(slow), 2) + np.cumsum(gaps)
            if rng.random() < 0.1:
                record.token_times, record.error = np.empty(0), "http 500"
            records.append(record)
        classes = None
        if with_classes:
            sessions = np.arange(n)
            sessions[1::3] = sessions[0::3][: len(sessions[1::3])]  # some two-round sessions
            classes = RequestClasses(
                names=("a", "b"),
                class_ids=np.arange(n) % 2,
                sessions=sessions,
                ttft_ms=np.where(np.arange(n) % 2, 150.0, 300.0),
                tpot_ms=np.full(n, 40.0),
                answer_tpot_ms=np.full(n, 60.0),
                answer_from=np.full(n, 4),
            )
        expected = _by_definition(records, slo, classes)
        cut = truncate(records, slo, classes)
        assert (cut is None) == (expected is None)
        if cut is not None and expected is not None:
            cuts += 1
            kept, at, reason = cut
            assert (at, reason) == expected
            assert [r.request_id for r in kept] == [
                r.request_id for r in records if r.success and r.token_times[-1] <= at
            ]
    assert 10 <= cuts <= 55  # both outcomes are exercised


@pytest.mark.parametrize("workload", ["chat", "mixed"])
def test_the_sim_aborts_only_trials_that_are_infeasible_and_changes_no_other(
    compose, workload
) -> None:
    """Random configurations at a load that makes some infeasible: on and off agree."""
    runs = {}
    for abort in (False, True):
        cfg = compose(f"workload={workload}", f"backend.early_abort={abort}")
        backend, space = create_backend(cfg), SearchSpace.from_config(cfg.space)
        load, slo = workload_from_config(cfg), slo_from_config(cfg)
        rng = np.random.default_rng(7)
        runs[abort] = [
            backend.evaluate(
                space.repair(
                    space.complete(space.sample(rng)), int(cfg.model.max_position_embeddings)
                ).config,
                load,
                slo,
                seed=1,
            )
            for _ in range(12)
        ]
    aborted = 0
    for full, cut in zip(runs[False], runs[True], strict=True):
        if cut.aborted_early is None:
            assert cut.metrics == full.metrics and cut.utility == full.utility
            continue
        aborted += 1
        assert not full.feasible and full.crash is None and not cut.feasible
        assert len(cut.requests) < len(full.requests)
        assert cut.utility == full.utility  # the violation when the miss became certain
    assert 0 < aborted < 12


def test_the_load_stops_once_the_verdict_is_certain() -> None:
    n = 400
    workload = Workload.plain(8, 4, np.arange(n) * 0.01, 0)  # 4 s of arrivals

    async def main():
        runner, url = await start_stub(StubBehavior(ttft_s=0.15))
        try:
            settings = LoadSettings(url, "stub", 500, abort_check_s=0.05)
            return await generate(workload, settings, abort=lambda r: hopeless(r, SLO))
        finally:
            await runner.cleanup()

    load = asyncio.run(main())
    assert load.aborted is not None and "over TTFT 100 ms" in load.aborted
    cut = [r for r in load.records if (r.error or "").startswith(ABORT_ERROR)]
    assert len(cut) > n / 2 and len(load.finished) + len(cut) == n
    assert all(r.success for r in load.finished) and load.duration_s < 1.5


def test_a_live_window_measures_each_finished_request_once() -> None:
    records, cache = _window(300, 5), {}
    assert hopeless(records, SLO, cache=cache) == hopeless(records, SLO)
    assert sorted(cache) == [0, 1, 2, 3, 4] and cache[0] == (True, 0)
    cache[0] = cache[1] = (False, 0)  # what was measured is not measured again
    assert hopeless(records, SLO, cache=cache) is None


def test_attainment_watch_counts_missed_sessions_once_against_the_target() -> None:
    from sloguard.early_abort import AttainmentWatch

    n = 10  # five sessions of two rounds: 0-1, 2-3, ... (the first round's id names it)
    classes = RequestClasses(
        names=("agent",),
        class_ids=np.zeros(n, int),
        sessions=np.repeat(np.arange(0, n, 2), 2),
        ttft_ms=np.full(n, 100.0),
        tpot_ms=np.full(n, 50.0),
        answer_tpot_ms=np.full(n, 50.0),
        answer_from=np.full(n, 4),
    )
    slo = SloContract(ttft_ms=100.0, itl_ms=50.0, attainment_target=0.5)
    watch = AttainmentWatch(n, slo, classes)
    assert (watch.sessions, watch.allowed) == (5, pytest.approx(2.5))
    watch.ended(_done(0, 0.05))
    watch.ended(_done(1, 0.5))  # session 0 misses
    watch.ended(_done(2, 0.5))  # session 2 misses
    assert watch.lost() is None and watch.most() == pytest.approx(0.6)
    watch.ended(_done(3, 0.5))  # session 2 again: still two sessions
    assert watch.lost() is None
    watch.miss(5)  # round 5's first token is overdue: session 4 misses
    assert "3 of 5 sessions missed their SLO" in watch.lost()
    assert watch.most() == pytest.approx(0.4)


def test_attainment_watch_polls_a_live_window_and_agrees_with_the_metrics() -> None:
    from sloguard.early_abort import AttainmentWatch, request_met
    from sloguard.metrics_collector import good_requests

    slo = SloContract(ttft_ms=100.0, itl_ms=50.0, attainment_target=0.9)
    records = [_done(i, 0.05 if i % 3 else 0.2) for i in range(12)]  # 0, 3, 6, 9 miss TTFT
    records[1].token_times = 0.05 + np.array([0.0, 0.01, 0.3])  # a stalled stream misses too
    in_flight = RequestRecord(12, 8, 4, 0.0, 0.0)
    cut = RequestRecord(13, 8, 4, 0.0, 0.0, error=f"{ABORT_ERROR}: unfinished")
    failed = RequestRecord(14, 8, 4, 0.0, 0.0, error="http 500")
    window = [*records, in_flight, cut, failed]
    good = good_requests(window, slo)
    assert [request_met(r, slo, None) for r in window] == good.tolist()
    watch = AttainmentWatch(len(window), slo, None)
    watch.poll(window)
    watch.poll(window)  # each ended request counts once
    assert watch.missed == {0, 1, 3, 6, 9, 14}
    assert watch.most() == pytest.approx(1 - 6 / 15) and "6 of 15" in watch.lost()
