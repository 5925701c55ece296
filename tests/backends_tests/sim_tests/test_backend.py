"""Invariants a vLLM engineer would check, through the Backend protocol."""

from __future__ import annotations

import pytest

from sloguard.backends import create_backend
from sloguard.crash_classifier import CrashCategory
from sloguard.evaluation import slo_from_config, workload_from_config
from sloguard.space import SearchSpace
from sloguard.workload import build_workload


@pytest.fixture
def evaluate(compose):
    def _evaluate(*overrides: str, seed: int = 1, **knobs):
        cfg = compose(*overrides)
        space = SearchSpace.from_config(cfg.space)
        config = space.repair(space.complete(knobs), cfg.model.max_position_embeddings).config
        return create_backend(cfg).evaluate(
            config, build_workload(cfg.workload), slo_from_config(cfg), seed=seed
        )

    return _evaluate


def test_same_seed_same_result_and_noise_varies_it(evaluate) -> None:
    a, b, c = evaluate(seed=3), evaluate(seed=3), evaluate(seed=4)
    assert a.metrics == b.metrics
    assert a.metrics["ttft_p99_ms"] != c.metrics["ttft_p99_ms"]
    assert (
        abs(a.metrics["output_throughput_tok_s"] / c.metrics["output_throughput_tok_s"] - 1) < 0.05
    )


def test_throughput_rises_with_max_num_seqs_until_the_client_binds(evaluate) -> None:
    thr = {
        s: evaluate(max_num_seqs=s).metrics["output_throughput_tok_s"] for s in (4, 8, 16, 32, 128)
    }
    assert thr[4] < thr[8] < thr[16] < thr[32]
    assert thr[128] == pytest.approx(thr[32], rel=0.05)  # 32 users: no more to batch


def test_eager_mode_slows_decode(evaluate) -> None:
    graphs, eager = evaluate(enforce_eager=False), evaluate(enforce_eager=True)
    assert eager.metrics["itl_p50_ms"] > 1.3 * graphs.metrics["itl_p50_ms"]
    assert eager.metrics["output_throughput_tok_s"] < graphs.metrics["output_throughput_tok_s"]


def test_chunked_prefill_lowers_itl_p99_under_long_prompts(evaluate) -> None:
    whole = evaluate(
        "workload=summarize", enable_chunked_prefill=False, max_num_batched_tokens=4096
    )
    chunked = evaluate(
        "workload=summarize", enable_chunked_prefill=True, max_num_batched_tokens=512
    )
    assert chunked.metrics["itl_p99_ms"] < 0.7 * whole.metrics["itl_p99_ms"]
    assert chunked.metrics["ttft_p50_ms"] > whole.metrics["ttft_p50_ms"]  # the price


def test_preemptions_appear_when_kv_is_short(evaluate) -> None:
    short = evaluate(
        "model=llama-3.1-8b", "hardware=l4-24gb", gpu_memory_utilization=0.78, max_model_len=2048
    )
    roomy = evaluate(
        "model=llama-3.1-8b", "hardware=l4-24gb", gpu_memory_utilization=0.93, max_model_len=2048
    )
    assert short.crash is None and roomy.crash is None
    assert short.server["num_preemptions"] > roomy.server["num_preemptions"]
    assert short.server["kv_cache_tokens"] < roomy.server["kv_cache_tokens"]


def test_prefix_caching_cuts_ttft_on_shared_prefixes(evaluate) -> None:
    shared = ("workload.shared_prefix_len=768", "workload.num_prefix_groups=4")
    on = evaluate(*shared, enable_prefix_caching=True)
    off = evaluate(*shared, enable_prefix_caching=False)
    assert on.server["prefix_cache_hit_rate"] > 0.5
    assert off.server["prefix_cache_hit_rate"] == 0.0
    assert on.metrics["ttft_p50_ms"] < 0.8 * off.metrics["ttft_p50_ms"]


def test_burstier_arrivals_raise_p99(evaluate) -> None:
    poisson = evaluate("workload=chat-poisson", "workload.request_rate=20")
    bursty = evaluate(
        "workload=chat-poisson",
        "workload.request_rate=20",
        "workload.arrival=gamma",
        "workload.burstiness=0.2",
    )
    assert bursty.metrics["ttft_p99_ms"] > 1.5 * poisson.metrics["ttft_p99_ms"]


def test_crashes_come_back_as_results_not_exceptions(evaluate) -> None:
    oom = evaluate("model=llama-3.1-8b", "hardware=l4-24gb", gpu_memory_utilization=0.6)
    assert oom.crash.category is CrashCategory.OOM and oom.utility is None
    assert not oom.feasible and oom.metrics == {}
    slow = evaluate("backend.timeout_s=0.5")
    assert slow.crash.category is CrashCategory.TIMEOUT and slow.crash.phase == "load"
    cuda = evaluate("backend.cuda_error_rate=1.0")
    assert cuda.crash.category is CrashCategory.CUDA


def test_oom_under_load_passes_the_memory_probe(evaluate) -> None:
    # high utilisation leaves too little headroom for a full batch's sampler buffers
    result = evaluate(
        "model=llama-3.1-8b",
        "hardware=l4-24gb",
        gpu_memory_utilization=0.95,
        max_num_seqs=128,
        max_model_len=2048,
    )
    assert result.crash.subcause == "oom_under_load" and result.crash.phase == "load"
    assert result.server["kv_cache_tokens"] > 0  # it started


def test_a_data_parallel_server_runs_its_engines_behind_vllms_balancer(evaluate, compose) -> None:
    cfg = compose("hardware=4xl4-24gb", "space.data_parallel_size=[1,2,4]")
    backend = create_backend(cfg)
    slo = slo_from_config(cfg)
    serving = backend.serving({"data_parallel_size": 4}, slo)
    assert (serving.replicas, serving.router) == (4, "dp-balance")
    assert backend.serving({"data_parallel_size": 1}, slo).replicas == 1
    over = ("hardware=4xl4-24gb", "space.data_parallel_size=[1,2,4]")  # 32 chat users
    one, four = (evaluate(*over, data_parallel_size=dp) for dp in (1, 4))
    assert min(four.server[f"replica{i}_requests"] for i in range(4)) > 0
    assert four.metrics["ttft_p99_ms"] < one.metrics["ttft_p99_ms"]


SPEC = ("space.num_speculative_tokens=[0,3]",)


def test_ngram_speculation_verifies_drafts_that_cost_no_model_step(evaluate, compose) -> None:
    cfg = compose(*SPEC)
    backend, slo = create_backend(cfg), slo_from_config(cfg)
    serving = backend.serving({"num_speculative_tokens": 3}, slo)
    assert serving.spec.enabled and serving.spec.max_tokens == 3 and serving.spec.draft_ratio == 0
    assert not backend.serving({"num_speculative_tokens": 0}, slo).spec.enabled
    light = ("workload.concurrency=2", *SPEC)  # two users: memory-bound decode steps
    off, on = (evaluate(*light, num_speculative_tokens=n) for n in (0, 3))
    assert off.metrics == evaluate(*light).metrics and "spec_draft_tokens" not in off.server
    assert on.metrics["completed"] == off.metrics["completed"]
    assert on.server["num_steps"] < 0.6 * off.server["num_steps"]
    assert on.metrics["e2el_p50_ms"] < 0.6 * off.metrics["e2el_p50_ms"]
    # vLLM's counters: accepted / drafted; three drafts each kept with 0.7 while all before are
    expected = (0.7 + 0.7**2 + 0.7**3) / 3
    assert on.server["spec_acceptance_rate"] == pytest.approx(expected, abs=0.02)
    assert on.server["spec_draft_tokens"] > 0


@pytest.mark.parametrize(
    "overrides",
    [("workload=chatbot",), ("model=llama-3.1-8b", "hardware=l4-24gb", "workload=summarization")],
)
def test_an_overloaded_load_stops_once_its_attainment_target_is_lost(compose, overrides) -> None:
    import dataclasses

    cfg = compose(*overrides)
    space = SearchSpace.from_config(cfg.space)
    config = space.repair(space.complete({}), cfg.model.max_position_embeddings).config
    backend, slo = create_backend(cfg), slo_from_config(cfg)
    workload = workload_from_config(cfg)
    overload = workload.at_rate(20 * workload.offered_rate())
    full = backend.evaluate(config, overload, slo, seed=1)
    after = 0.5 * (overload.num_first - 1) / overload.offered_rate()
    stopped = backend.evaluate(
        config, dataclasses.replace(overload, stop_lost_after_s=after), slo, seed=1
    )
    assert full.aborted_early is None and full.metrics["attainment"] < slo.attainment_target
    assert "sessions missed their SLO" in (stopped.aborted_early or "")
    assert stopped.crash is None and not stopped.feasible
    # it stopped soon after the stop time (first tokens overdue count before their request
    # ends), long before the backlog drained
    assert stopped.server["num_steps"] < full.server["num_steps"] / 2
    # the requests it reports had ended by then, as the full load served them
    ended = {r.request_id: r for r in full.requests}
    assert len(stopped.requests) < len(full.requests) / 2
    for r in stopped.requests:
        assert r.token_times.tolist() == ended[r.request_id].token_times.tolist()
    # the most it could still reach is below the target and no less than what it did reach
    assert full.metrics["attainment"] <= stopped.metrics["attainment_max"] < slo.attainment_target
