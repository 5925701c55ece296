from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import pytest

from sloguard.load_generator import (
    HUNG_ERROR,
    TIMEOUT_ERROR,
    LoadResult,
    LoadSettings,
    build_prompts,
    generate,
)
from sloguard.testing import StubBehavior, start_stub
from sloguard.workload import Workload, build_workload
from tests.conftest import with_limits

VOCAB = 500
# wall-clock bounds (stub and client share one event loop): on a shared 2-core box a burst of
# load from elsewhere can stretch a run by 10-15 ms; a rerun must meet the same bounds
wall_clock = pytest.mark.flaky(reruns=2)


def _workload(
    n: int,
    *,
    prompt: int = 8,
    output: int = 5,
    gap_s: float = 0.0,
    concurrency: int = 0,
    groups: np.ndarray | None = None,
    prefix: int = 0,
) -> Workload:
    return Workload(
        prompt_lens=np.full(n, prompt),
        output_lens=np.full(n, output),
        arrival_times=np.arange(n) * gap_s,
        concurrency=concurrency,
        prefix_groups=np.full(n, -1) if groups is None else groups,
        shared_prefix_len=prefix,
    )


def _run(
    behavior: StubBehavior, workload: Workload, **settings: float
) -> tuple[LoadResult, StubBehavior]:
    async def main() -> LoadResult:
        runner, url = await start_stub(behavior)
        try:
            return await generate(workload, LoadSettings(url, "stub", VOCAB, **settings))
        finally:
            await runner.cleanup()

    return asyncio.run(main()), behavior


@wall_clock
def test_measures_the_stubs_exact_ttft_and_itl() -> None:
    result, _ = _run(StubBehavior(ttft_s=0.08, itl_s=0.02), _workload(4, output=6, gap_s=0.05))
    for record in result.records:
        assert record.error is None and record.output_len == 6
        ttft = record.token_times[0] - record.send_time
        assert 0.075 <= ttft <= 0.12
        gaps = np.diff(record.token_times)
        assert gaps.min() >= 0.017 and np.median(gaps) <= 0.03
    assert result.duration_s == pytest.approx(0.15 + 0.08 + 5 * 0.02, abs=0.06)


@wall_clock
def test_open_loop_sends_on_schedule() -> None:
    result, _ = _run(StubBehavior(itl_s=0.001), _workload(20, gap_s=0.01))
    lag = result.schedule_lag_s
    assert len(lag) == 20 and lag.min() >= 0.0 and np.percentile(lag, 99) < 0.01
    sends = [r.send_time for r in result.records]
    assert sends == sorted(sends) and sends[-1] == pytest.approx(0.19, abs=0.01)


@wall_clock
def test_closed_loop_caps_requests_in_flight() -> None:
    result, _ = _run(StubBehavior(ttft_s=0.05, itl_s=0.01), _workload(12, concurrency=3))
    spans = [(r.send_time, r.token_times[-1]) for r in result.records]
    in_flight = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert in_flight == 3
    # 12 requests, 3 at a time, ~0.09 s each: four waves
    assert result.duration_s == pytest.approx(4 * 0.09, abs=0.08)
    assert result.schedule_lag_s.max() > 0.2  # later requests waited for a slot


def test_failed_requests_are_recorded_with_their_cause() -> None:
    faults = {1: "500", 2: "reset", 3: "hang", 4: "cut"}
    behavior = StubBehavior(itl_s=0.01, faults=faults)
    result, _ = _run(behavior, _workload(6, output=6), stall_timeout_s=0.5)
    errors = {r.request_id: r.error for r in result.records}
    assert errors[0] is None and errors[5] is None
    assert errors[1].startswith("http 500") and "stub failure" in errors[1]
    assert errors[2].startswith("reset:")
    assert errors[3].startswith(HUNG_ERROR) and "after 2 tokens" in errors[3]
    assert errors[4].startswith("reset: stream ended before [DONE]")
    for request_id in faults:
        record = result.records[request_id]
        assert not record.success and record.output_len == 0


def test_load_timeout_fails_unfinished_and_unsent_requests() -> None:
    workload = _workload(4, output=20, gap_s=0.5)  # 20 tokens x 20 ms: 0.4 s each
    result, _ = _run(StubBehavior(itl_s=0.02), workload, load_timeout_s=0.6)
    assert result.timed_out
    errors = [r.error or "" for r in result.records]
    assert errors[0] == ""
    assert errors[1].startswith(TIMEOUT_ERROR) and "unfinished" in errors[1]
    assert all(e.startswith(TIMEOUT_ERROR) and "not sent" in e for e in errors[2:])


def test_short_output_is_a_failure() -> None:
    # the stub streams max_tokens tokens; fake a server that stops early via a cut after 2
    result, _ = _run(StubBehavior(faults={0: "cut"}, fault_after_tokens=3), _workload(1))
    assert "3 tokens" in (result.records[0].error or "")


def test_payload_fixes_output_length_and_prompt_tokens() -> None:
    behavior = StubBehavior()
    workload = _workload(5, prompt=12, output=7)
    _run(behavior, workload)
    assert len(behavior.received) == 5
    for body in behavior.received:
        assert body["stream"] is True and body["ignore_eos"] is True
        assert body["max_tokens"] == 7 and len(body["prompt"]) == 12
        assert all(16 <= t < VOCAB for t in body["prompt"])


@pytest.mark.parametrize("priority", [True, False])
def test_requests_carry_their_class_priority_when_asked(priority: bool) -> None:
    behavior = StubBehavior()
    _run(behavior, with_limits(_workload(3), [2000, 100, 500]), priority=priority)
    sent = {tuple(body["prompt"]): body.get("priority") for body in behavior.received}
    prompts = build_prompts(_workload(3), VOCAB, 0)
    expected = [2, 0, 1] if priority else [None, None, None]
    assert [sent[tuple(p)] for p in prompts] == expected


def test_prompts_are_deterministic_and_share_group_prefixes() -> None:
    groups = np.array([0, 1, 0, -1, 1])
    workload = _workload(5, prompt=20, groups=groups, prefix=8)
    prompts = build_prompts(workload, VOCAB, seed=3)
    assert prompts == build_prompts(workload, VOCAB, seed=3)
    assert prompts != build_prompts(workload, VOCAB, seed=4)
    assert prompts[0][:8] == prompts[2][:8] and prompts[1][:8] == prompts[4][:8]
    assert prompts[0][:8] != prompts[1][:8] and prompts[0][8:] != prompts[2][8:]
    assert [len(p) for p in prompts] == [20] * 5


def test_the_same_workload_config_drives_the_stub(compose: Callable) -> None:
    workload = build_workload(compose("workload=smoke").workload)
    behavior = StubBehavior()
    result, _ = _run(behavior, workload)
    sent = sorted(behavior.received, key=lambda b: len(b["prompt"]))
    assert sorted(len(b["prompt"]) for b in sent) == sorted(workload.prompt_lens.tolist())
    assert [r.prompt_len for r in result.records] == workload.prompt_lens.tolist()
    assert all(r.success for r in result.records)


def test_bad_vocab_is_rejected() -> None:
    with pytest.raises(ValueError, match="vocab_size=10"):
        build_prompts(_workload(1), 10, seed=0)


def test_a_trace_drives_the_load_generator_and_the_sim_alike(compose, tmp_path) -> None:
    from sloguard.cli import evaluate

    rows = "".join(f"{0.05 * i:.2f},{20 + 3 * i},{2 + i % 3}\n" for i in range(12))
    trace = tmp_path / "trace.csv"
    trace.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n" + rows)
    overrides = ["workload=trace", f"workload.trace_path={trace}", "workload.num_requests=12"]
    workload = build_workload(compose(*overrides).workload)
    behavior = StubBehavior()
    result, _ = _run(behavior, workload)
    assert [len(b["prompt"]) for b in behavior.received] == [20 + 3 * i for i in range(12)]
    assert [r.output_len for r in result.records] == [2 + i % 3 for i in range(12)]
    sends = np.array([r.send_time for r in result.records])
    assert sends == pytest.approx(np.arange(12) * 0.05, abs=0.01)
    sim = evaluate([*overrides, "model=tiny-random", "hardware=cpu", "space=cpu-small",
                    "knobs.max_model_len=2048", "knobs.max_num_batched_tokens=2048"])  # fmt: skip
    assert sim["crash"] is None and sim["metrics"]["num_requests"] == 12
    assert sim["metrics"]["completed"] == 12


def test_multi_round_requests_chain_their_prompts_and_wait_for_the_round_before(compose) -> None:
    from functools import partial

    from sloguard.backends.sim import zero_load_ttft_ms
    from sloguard.cli import evaluate

    overrides = ["workload=tool-calling", "workload.num_requests=4", "workload.concurrency=2",
                 "workload.classes.0.tool_latency_s=0.05"]  # fmt: skip
    cfg = compose(*overrides)
    workload = build_workload(cfg.workload, partial(zero_load_ttft_ms, cfg.model, cfg.hardware))
    behavior = StubBehavior(ttft_s=0.02, itl_s=0.002)
    result, _ = _run(behavior, workload)
    assert len(result.records) == 12 and all(r.success for r in result.records)
    by_prompt = {len(b["prompt"]): b["prompt"] for b in behavior.received}
    for rid in range(4, 12):
        before = int(workload.follows[rid])
        prompt, previous = (
            by_prompt[workload.prompt_lens[rid]],
            by_prompt[workload.prompt_lens[before]],
        )
        assert prompt[: len(previous)] == previous  # the round before's prompt is its prefix
        record = result.records[rid]
        ended = result.records[before].token_times[-1]
        assert record.scheduled_time == pytest.approx(ended + 0.05)
        assert record.send_time >= ended + 0.05
    # two sessions at a time: the third starts only when a whole session (3 rounds) has ended
    session_ends = sorted(result.records[r].token_times[-1] for r in range(12) if
                          workload.next_rounds()[r] < 0)  # fmt: skip
    assert sorted(r.send_time for r in result.records[:4])[2] >= session_ends[0] - 1e-3
    sim = evaluate([*overrides, "model=tiny-random", "hardware=cpu", "space=cpu-small",
                    "knobs.max_model_len=2048", "knobs.max_num_batched_tokens=2048"])  # fmt: skip
    assert sim["metrics"]["num_requests"] == 12 and sim["metrics"]["completed"] == 12
    assert sim["metrics"]["class/agent/sessions"] == 4


def test_a_failed_round_leaves_the_rounds_after_it_unsent(compose) -> None:
    from sloguard.result import unsent_round_error

    cfg = compose("workload=tool-calling", "workload.num_requests=3",
                  "workload.classes.0.tool_latency_s=0.0")  # fmt: skip
    workload = build_workload(cfg.workload, lambda p: np.full(len(p), 100.0))
    second = int(workload.next_rounds()[0])  # session 0's second round fails with an HTTP 500
    third = int(workload.next_rounds()[second])
    behavior = StubBehavior(faults={second: "500"})
    result, _ = _run(behavior, workload)
    errors = {r.request_id: r.error for r in result.records}
    assert errors[0] is None and errors[second].startswith("http 500")
    assert errors[third] == unsent_round_error(second)
    assert len(behavior.received) == len(workload) - 1  # the third round was never sent
    assert all(r.success for r in result.records if r.request_id not in (second, third))
