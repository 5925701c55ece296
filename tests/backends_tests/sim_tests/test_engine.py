import numpy as np
import pytest

from sloguard.backends.sim import EngineSettings, run_engine
from sloguard.workload import Workload
from tests.conftest import with_limits


def _workload(prompts, outputs, due=None, concurrency=0, groups=None, prefix=0) -> Workload:
    n = len(prompts)
    return Workload(
        np.array(prompts),
        np.array(outputs),
        np.zeros(n) if due is None else np.array(due, dtype=float),
        concurrency,
        np.full(n, -1) if groups is None else np.array(groups),
        prefix,
    )


def _settings(**kw) -> EngineSettings:
    base = {
        "max_num_seqs": 8,
        "max_num_batched_tokens": 2048,
        "max_model_len": 4096,
        "enable_chunked_prefill": True,
        "enable_prefix_caching": False,
        "num_blocks": 1000,
    }
    return EngineSettings(**{**base, **kw})


def _const(step: float = 0.01):
    return lambda tokens, sampled, pairs, ctx, jitter: step


def _run(workload: Workload, **settings):
    """``workload`` on an engine with 10 ms steps, no jitter and a 60 s timeout."""
    return run_engine(workload, _settings(**settings), _const(), np.ones(1), 60.0)


def test_one_request_timed_by_hand() -> None:
    run = _run(_workload([32], [4]))
    rec = run.records[0]
    # step 1 prefills 32 tokens and samples token 1; steps 2-4 decode one token each
    assert rec.token_times.tolist() == pytest.approx([0.01, 0.02, 0.03, 0.04])
    assert run.num_steps == 4 and run.duration_s == pytest.approx(0.04)


def test_chunked_prefill_splits_a_long_prompt() -> None:
    run = _run(_workload([32], [2]), max_num_batched_tokens=16)
    assert run.records[0].token_times.tolist() == pytest.approx([0.02, 0.03])


def test_without_chunked_prefill_a_prompt_waits_for_a_whole_budget() -> None:
    # request 1 decodes; request 2's 20-token prompt needs a step with 20 free budget tokens
    run = _run(
        _workload([10, 20], [3, 1]), max_num_batched_tokens=20, enable_chunked_prefill=False
    )
    first, second = run.records
    assert first.token_times.tolist() == pytest.approx([0.01, 0.02, 0.03])
    assert second.token_times.tolist() == pytest.approx([0.04])  # after request 1 finished


@pytest.mark.parametrize(
    ("threshold", "long_times", "short_times"),
    [(0, [0.01, 0.02], [0.02, 0.03]), (32, [0.02, 0.03], [0.01, 0.02])],
)
def test_long_prefill_threshold_lets_a_short_prompt_past_a_long_one(
    threshold, long_times, short_times
) -> None:
    # a 64-token prompt fills the 64-token budget; capped at 32 it leaves room for the short one
    run = _run(
        _workload([64, 8], [2, 2]),
        max_num_batched_tokens=64,
        long_prefill_token_threshold=threshold,
    )
    long, short = run.records
    assert long.token_times.tolist() == pytest.approx(long_times)
    assert short.token_times.tolist() == pytest.approx(short_times)


def test_long_prefill_threshold_is_lifted_for_a_request_alone() -> None:
    # vLLM caps a prefill only while another request runs or waits (nobody else to starve)
    run = _run(_workload([64], [1]), long_prefill_token_threshold=16, enable_chunked_prefill=False)
    assert run.records[0].token_times.tolist() == pytest.approx([0.01])


def test_priority_policy_admits_the_tightest_class_first() -> None:
    # one seat; three requests at once, the last with the tightest TTFT limit
    workload = with_limits(_workload([8] * 3, [3] * 3), [2000, 5000, 100])
    firsts = {}
    for policy in ("fcfs", "priority"):
        run = _run(workload, max_num_seqs=1, scheduling_policy=policy)
        firsts[policy] = [r.token_times[0] for r in run.records]
    assert firsts["fcfs"] == pytest.approx([0.01, 0.04, 0.07])
    # by priority (rank of the TTFT limit): request 2, then 0, then 1
    assert firsts["priority"] == pytest.approx([0.04, 0.07, 0.01])


@pytest.mark.parametrize("prompts", [[8, 16], [16, 16]])
def test_priority_policy_preempts_the_lowest_priority_request(prompts) -> None:
    # a loose request, then a tight one 50 ms later, outgrow 6 blocks; fcfs preempts the newest
    # (the tight one), priority the loose one: [8, 16] when the tight one needs a block, after
    # the loose one is already in the step (it is taken out); [16, 16] when the loose one needs
    # it first (it preempts itself, and the step goes on without it)
    workload = with_limits(_workload(prompts, [40, 40], due=[0.0, 0.05]), [5000, 100])
    ends = {}
    for policy in ("fcfs", "priority"):
        run = _run(workload, num_blocks=6, scheduling_policy=policy)
        assert run.num_preemptions == 1
        assert [len(r.token_times) for r in run.records] == [40, 40]
        ends[policy] = [r.token_times[-1] for r in run.records]
    assert ends["fcfs"][0] < ends["fcfs"][1]
    assert ends["priority"][1] < ends["priority"][0]


def test_a_step_recounted_from_its_requests_matches_its_running_totals(monkeypatch) -> None:
    """The totals a step is timed by, recounted after a request is taken out of it
    (``_totals``), are those the scheduler keeps as it plans, on every step of two runs."""
    from sloguard.backends.sim._scheduler import VllmScheduler, _totals

    plan_of = VllmScheduler._plan
    seen = []

    def checked(self, engine):
        plan = plan_of(self, engine)
        if plan is not None:
            kept = (plan.num_sampled, plan.attn_pairs, plan.decode_context)
            seen.append((_totals(engine, plan.ids, plan.tokens, plan.spec is not None), kept))
        return plan

    monkeypatch.setattr(VllmScheduler, "_plan", checked)
    ranked = with_limits(_workload([8, 16], [40, 40], due=[0.0, 0.05]), [5000, 100])
    _run(ranked, num_blocks=6, scheduling_policy="priority")
    _run(_workload([40, 300, 12, 90], [6, 3, 9, 4], due=[0, 0.01, 0.02, 0.02]),
         max_num_batched_tokens=64)  # fmt: skip
    assert len(seen) >= 20 and all(recounted == kept for recounted, kept in seen)


def test_max_num_seqs_caps_the_batch() -> None:
    run = _run(_workload([8] * 4, [5] * 4), max_num_seqs=2)
    starts = sorted(r.token_times[0] for r in run.records)
    assert starts == pytest.approx([0.01, 0.01, 0.06, 0.06])


def test_preemption_when_blocks_run_out_and_everything_still_finishes() -> None:
    # each request grows to 16 + 40 = 56 tokens = 4 blocks; 6 blocks cannot hold two of them
    run = _run(_workload([16, 16], [40, 40]), num_blocks=6)
    assert run.num_preemptions > 0
    assert all(r.success and r.output_len == 40 for r in run.records)
    roomy = _run(_workload([16, 16], [40, 40]), num_blocks=100)
    assert roomy.num_preemptions == 0 and roomy.duration_s < run.duration_s


def test_requests_longer_than_max_model_len_are_rejected() -> None:
    run = _run(_workload([100, 10], [50, 5]), max_model_len=128)
    assert run.records[0].error.startswith("HTTP 400")
    assert run.records[1].success


def test_open_loop_and_the_concurrency_cap() -> None:
    run = _run(_workload([8, 8, 8], [2, 2, 2], due=[0.0, 0.005, 1.0], concurrency=1))
    a, b, c = run.records
    assert b.send_time == pytest.approx(a.token_times[-1])  # waited for the only slot
    assert c.send_time == pytest.approx(1.0)  # slot free by then: sent when due


def test_prefix_cache_skips_the_shared_prefix() -> None:
    wl = _workload([80, 80], [2, 2], due=[0.0, 1.0], groups=[0, 0], prefix=64)
    tokens = []
    step = lambda t, s, p, c, j: tokens.append(t) or 0.01  # noqa: E731
    run = run_engine(wl, _settings(enable_prefix_caching=True), step, np.ones(1), 60.0)
    assert tokens[0] == 80 and 16 in tokens  # second request computes only 80 - 64 tokens
    # as vLLM counts: every prompt token looked up (80 + 80), the cached ones hit (64)
    assert run.prefix_cache_hit_rate == pytest.approx(64 / 160)


@pytest.mark.parametrize(("block", "reused"), [(16, 64), (32, 64), (48, 48), (64, 64), (128, 0)])
def test_a_bigger_block_caches_only_whole_blocks_of_the_prefix(block, reused) -> None:
    """A 72-token shared prefix is reused in whole blocks: 64 tokens of 16s, none of 128."""
    wl = _workload([100, 100], [2, 2], due=[0.0, 1.0], groups=[0, 0], prefix=72)
    tokens = []
    step = lambda t, s, p, c, j: tokens.append(t) or 0.01  # noqa: E731
    settings = _settings(enable_prefix_caching=True, block_size=block)
    run = run_engine(wl, settings, step, np.ones(1), 60)
    # step 1 prefills the first prompt and samples its first token, step 2 its last; the
    # second request arrives at 1 s
    assert tokens == [100, 1, 100 - reused, 1]
    assert run.prefix_cache_hit_rate == pytest.approx(reused / 200)


def test_a_request_holds_whole_blocks_so_bigger_blocks_hold_fewer_requests() -> None:
    # the same 128 tokens of cache: 16 + 40 = 56 tokens each, two fit in 4 blocks of 32
    # (2 blocks each) but one block of 128 holds one request, the other waits for it
    both = _run(_workload([16, 16], [40, 40]), num_blocks=4, block_size=32)
    assert both.num_steps == 40 and both.num_preemptions == 0
    one = _run(_workload([16, 16], [40, 40]), num_blocks=1, block_size=128)
    assert one.num_steps == 80 and all(r.success for r in one.records)
    second = max(r.token_times[0] for r in one.records)
    assert second == pytest.approx(0.41)  # its prefill starts when the first one is done


def test_a_lookup_counts_once_when_admitted_as_vllm_counts_it() -> None:
    """The second request waits for blocks for many steps (and is preempted in the second
    case): its prompt enters the hit rate once, at admission, as vLLM's counters have it."""
    waiting = _workload([80, 80], [30, 4], due=[0.0, 0.05], groups=[0, 0], prefix=64)
    run = _run(waiting, enable_prefix_caching=True, num_blocks=7)
    assert run.num_steps > 30 and run.num_preemptions == 0
    assert run.prefix_cache_hit_rate == pytest.approx(64 / 160)
    preempted = _workload([40, 40], [40, 40], due=[0.0, 0.05], groups=[0, 0], prefix=32)
    run = _run(preempted, enable_prefix_caching=True, num_blocks=8)
    assert run.num_preemptions > 0 and all(r.success for r in run.records)
    assert run.prefix_cache_hit_rate == pytest.approx(32 / 80)


def test_the_frontend_delay_holds_each_request_back_from_the_scheduler() -> None:
    run = run_engine(
        _workload([8, 8], [2, 2], due=[0.0, 0.5]), _settings(), _const(), np.ones(1), 60.0,
        arrival_delay_s=0.005,
    )  # fmt: skip
    a, b = run.records
    assert a.send_time == 0.0 and b.send_time == 0.5
    assert a.token_times.tolist() == pytest.approx([0.015, 0.025])  # scheduled at 0.005
    assert b.token_times.tolist() == pytest.approx([0.515, 0.525])


def test_timeout_fails_what_is_unfinished() -> None:
    run = run_engine(_workload([8], [1000]), _settings(), _const(), np.ones(1), 1.0)
    assert run.timed_out and run.records[0].error.startswith("timeout")


@pytest.mark.parametrize(
    ("settings", "concurrency", "rate", "delay"),
    [
        ({}, 4, 0.0, 0.0),  # closed loop: slots free only when requests finish
        ({"max_num_seqs": 3, "num_blocks": 40}, 0, 50.0, 0.0),  # open loop, short of KV
        ({"enable_chunked_prefill": False, "max_num_batched_tokens": 256}, 0, 20.0, 0.0),
        ({"enable_prefix_caching": True}, 6, 30.0, 0.0),  # capped open loop
        ({}, 4, 0.0, 0.02),  # frontend delay: closed loop
        ({"max_num_seqs": 4}, 0, 40.0, 0.03),  # frontend delay: open loop
        ({"max_num_seqs": 3, "num_blocks": 12, "block_size": 64}, 0, 50.0, 0.0),  # big blocks
        ({"enable_prefix_caching": True, "block_size": 32}, 6, 30.0, 0.0),
    ],
)
def test_fast_decode_jumps_give_exactly_the_step_by_step_result(
    compose, settings, concurrency, rate, delay
) -> None:
    from sloguard.backends.sim import StepTimeModel
    from sloguard.backends.sim._engine import make_jitter

    rng = np.random.default_rng(7)
    n = 60
    due = np.cumsum(rng.exponential(1 / rate, n)) if rate else None
    wl = _workload(
        rng.integers(20, 200, n), rng.integers(1, 120, n), due, concurrency,
        groups=rng.integers(0, 3, n), prefix=32,
    )  # fmt: skip
    cfg = compose("model=qwen2-1.5b", "hardware=a100-40gb")
    knobs = {"quantization": "fp16", "enforce_eager": False, "max_num_seqs": 8}
    step = StepTimeModel(cfg.model, cfg.hardware, knobs)
    jitter = make_jitter(np.random.default_rng(1), 0.05, size=97)
    runs = [
        run_engine(
            wl, _settings(**settings), step, jitter, 600.0, arrival_delay_s=delay, fast_decode=fast
        )
        for fast in (True, False)
    ]
    fast, slow = runs
    for a, b in zip(fast.records, slow.records, strict=True):
        assert a.error == b.error and a.send_time == b.send_time
        assert a.token_times.tolist() == b.token_times.tolist()  # the same floats, not approx
    assert (fast.num_steps, fast.num_preemptions, fast.duration_s) == (
        slow.num_steps, slow.num_preemptions, slow.duration_s
    )  # fmt: skip
    assert fast.peak_kv_usage == slow.peak_kv_usage
    assert fast.prefix_cache_hit_rate == slow.prefix_cache_hit_rate


def test_fast_decode_with_a_plain_step_function_and_a_timeout() -> None:
    wl = _workload([8, 8], [500, 40], due=[0.0, 0.3])
    runs = [
        run_engine(wl, _settings(), _const(), np.ones(1), 2.0, fast_decode=fast)
        for fast in (True, False)
    ]
    assert runs[0].timed_out and runs[1].timed_out
    assert [r.token_times.tolist() for r in runs[0].records] == [
        r.token_times.tolist() for r in runs[1].records
    ]
    assert runs[0].num_steps == runs[1].num_steps


def _rounds(prompts, outputs, due, follows, concurrency=0) -> Workload:
    """Multi-round requests: ``follows[i]`` is the round ``i`` follows (-1: a first round)."""
    wl = _workload(prompts, outputs, due, concurrency)
    return Workload(
        wl.prompt_lens, wl.output_lens, wl.arrival_times, concurrency, wl.prefix_groups,
        follows=np.array(follows),
    )  # fmt: skip


def test_a_later_round_is_sent_when_the_round_before_ends_plus_the_tool_latency() -> None:
    wl = _rounds([8, 30], [2, 2], [0.0, 0.1], [-1, 0])
    run = _run(wl)
    first, second = run.records
    assert first.token_times.tolist() == pytest.approx([0.01, 0.02])
    assert second.send_time == pytest.approx(0.12)  # ended at 0.02, tool took 0.1
    assert second.token_times.tolist() == pytest.approx([0.13, 0.14])


def test_a_session_keeps_its_client_slot_through_all_its_rounds() -> None:
    # two sessions of two rounds each, one client slot: B starts only after A's last round
    wl = _rounds([8, 8, 20, 20], [2, 2, 2, 2], [0.0, 0.0, 0.05, 0.05], [-1, -1, 0, 1], 1)
    run = _run(wl)
    a1, b1, a2, b2 = run.records
    assert a2.send_time == pytest.approx(a1.token_times[-1] + 0.05)
    assert b1.send_time == pytest.approx(a2.token_times[-1])
    assert b2.send_time == pytest.approx(b1.token_times[-1] + 0.05)


def test_a_later_round_reuses_the_cached_prompt_of_the_round_before() -> None:
    tokens: list[int] = []
    step = lambda t, s, p, c, j: tokens.append(t) or 0.01  # noqa: E731
    wl = _rounds([40, 60], [2, 2], [0.0, 0.0], [-1, 0])
    for caching in (True, False):
        tokens.clear()
        run = run_engine(wl, _settings(enable_prefix_caching=caching), step, np.ones(1), 60.0)
        # round 2's prompt starts with round 1's 40 tokens: 32 of them fill whole blocks
        assert tokens == [40, 1, 60 - 32 if caching else 60, 1]
        # vLLM's rate: hit tokens over every prompt token looked up (40 + 60)
        assert run.prefix_cache_hit_rate == pytest.approx(32 / 100 if caching else 0.0)


def test_a_failed_round_fails_the_rounds_after_it_and_frees_the_slot() -> None:
    wl = _rounds([8, 8, 120, 200], [2, 2, 2, 2], [0.0, 0.0, 0.0, 0.0], [-1, -1, 0, 2], 1)
    run = _run(wl, max_model_len=100)
    a1, b1, a2, a3 = run.records
    assert a1.success and b1.success and not a2.success and not a3.success
    assert a2.error.startswith("HTTP 400")
    assert a3.error == "not sent: an earlier round (request 2) failed"
    assert b1.send_time == pytest.approx(a1.token_times[-1])  # the slot freed when a2 failed


@pytest.mark.parametrize("concurrency", [0, 3])
def test_fast_decode_is_exact_for_multi_round_requests(compose, concurrency) -> None:
    from sloguard.backends.sim import StepTimeModel
    from sloguard.backends.sim._engine import make_jitter
    from sloguard.workload import build_workload

    cfg = compose(
        "workload=tool-calling", "workload.num_requests=40", f"workload.concurrency={concurrency}"
    )
    wl = build_workload(cfg.workload, lambda p: np.full(len(p), 50.0))
    step = StepTimeModel(cfg.model, cfg.hardware, {"quantization": "fp16", "enforce_eager": False,
                                                   "max_num_seqs": 8})  # fmt: skip
    jitter = make_jitter(np.random.default_rng(1), 0.05, size=97)
    fast, slow = (
        run_engine(wl, _settings(enable_prefix_caching=True), step, jitter, 600.0, fast_decode=f)
        for f in (True, False)
    )
    assert len(fast.records) == 120 and all(r.success for r in fast.records)
    for a, b in zip(fast.records, slow.records, strict=True):
        assert a.send_time == b.send_time
        assert a.token_times.tolist() == b.token_times.tolist()
    assert fast.prefix_cache_hit_rate == slow.prefix_cache_hit_rate > 0
