import numpy as np
import pytest

from sloguard.backends.sim import EngineSettings, run_engine
from sloguard.workload import Workload


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
    return lambda tokens, sampled, pairs, ctx: step


def test_one_request_timed_by_hand() -> None:
    run = run_engine(_workload([32], [4]), _settings(), _const(), np.ones(1), 60.0)
    rec = run.records[0]
    # step 1 prefills 32 tokens and samples token 1; steps 2-4 decode one token each
    assert rec.token_times.tolist() == pytest.approx([0.01, 0.02, 0.03, 0.04])
    assert run.num_steps == 4 and run.duration_s == pytest.approx(0.04)


def test_chunked_prefill_splits_a_long_prompt() -> None:
    run = run_engine(
        _workload([32], [2]), _settings(max_num_batched_tokens=16), _const(), np.ones(1), 60.0
    )
    assert run.records[0].token_times.tolist() == pytest.approx([0.02, 0.03])


def test_without_chunked_prefill_a_prompt_waits_for_a_whole_budget() -> None:
    # request 1 decodes; request 2's 20-token prompt needs a step with 20 free budget tokens
    run = run_engine(
        _workload([10, 20], [3, 1]),
        _settings(max_num_batched_tokens=20, enable_chunked_prefill=False),
        _const(),
        np.ones(1),
        60.0,
    )
    first, second = run.records
    assert first.token_times.tolist() == pytest.approx([0.01, 0.02, 0.03])
    assert second.token_times.tolist() == pytest.approx([0.04])  # after request 1 finished


def test_max_num_seqs_caps_the_batch() -> None:
    run = run_engine(
        _workload([8] * 4, [5] * 4), _settings(max_num_seqs=2), _const(), np.ones(1), 60.0
    )
    starts = sorted(r.token_times[0] for r in run.records)
    assert starts == pytest.approx([0.01, 0.01, 0.06, 0.06])


def test_preemption_when_blocks_run_out_and_everything_still_finishes() -> None:
    # each request grows to 16 + 40 = 56 tokens = 4 blocks; 6 blocks cannot hold two of them
    run = run_engine(
        _workload([16, 16], [40, 40]), _settings(num_blocks=6), _const(), np.ones(1), 60.0
    )
    assert run.num_preemptions > 0
    assert all(r.success and r.output_len == 40 for r in run.records)
    roomy = run_engine(
        _workload([16, 16], [40, 40]), _settings(num_blocks=100), _const(), np.ones(1), 60.0
    )
    assert roomy.num_preemptions == 0 and roomy.duration_s < run.duration_s


def test_requests_longer_than_max_model_len_are_rejected() -> None:
    run = run_engine(
        _workload([100, 10], [50, 5]), _settings(max_model_len=128), _const(), np.ones(1), 60.0
    )
    assert run.records[0].error.startswith("HTTP 400")
    assert run.records[1].success


def test_open_loop_and_the_concurrency_cap() -> None:
    run = run_engine(
        _workload([8, 8, 8], [2, 2, 2], due=[0.0, 0.005, 1.0], concurrency=1),
        _settings(),
        _const(),
        np.ones(1),
        60.0,
    )
    a, b, c = run.records
    assert b.send_time == pytest.approx(a.token_times[-1])  # waited for the only slot
    assert c.send_time == pytest.approx(1.0)  # slot free by then: sent when due


def test_prefix_cache_skips_the_shared_prefix() -> None:
    wl = _workload([80, 80], [2, 2], due=[0.0, 1.0], groups=[0, 0], prefix=64)
    tokens = []
    step = lambda t, s, p, c: tokens.append(t) or 0.01  # noqa: E731
    run = run_engine(wl, _settings(enable_prefix_caching=True), step, np.ones(1), 60.0)
    assert tokens[0] == 80 and 16 in tokens  # second request computes only 80 - 64 tokens
    assert run.prefix_cache_hit_rate == pytest.approx(0.5)


def test_timeout_fails_what_is_unfinished() -> None:
    run = run_engine(_workload([8], [1000]), _settings(), _const(), np.ones(1), 1.0)
    assert run.timed_out and run.records[0].error.startswith("timeout")
