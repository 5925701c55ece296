import pytest

from sloguard.backends.sim import plan_memory
from sloguard.crash_classifier import CrashCategory, classify
from sloguard.gpu_profile import MemoryGuard, kv_bytes_per_token
from sloguard.space import SearchSpace


def _knobs(compose_cfg, **kw):
    return SearchSpace.from_config(compose_cfg.space).complete(kw)


def test_kv_bytes_per_token_matches_design(compose) -> None:
    # DESIGN.md: Qwen2-1.5B 28 layers x 2 KV heads x 128 x fp16 x 2 = 28 KiB per token
    assert kv_bytes_per_token(compose().model) == 28 * 1024
    assert kv_bytes_per_token(compose("model=llama-3.1-8b").model) == 128 * 1024


def test_kv_budget_is_utilisation_minus_weights_activations_overhead(compose) -> None:
    cfg = compose()
    plan, crash = plan_memory(cfg.model, cfg.hardware, _knobs(cfg, gpu_memory_utilization=0.9))
    assert crash is None
    expected = 0.9 * 39.4 - plan.weights_gib - plan.activation_gib - plan.non_torch_gib
    assert plan.kv_cache_gib == pytest.approx(expected)
    assert plan.weights_gib == pytest.approx(1.54e9 * 2 / 2**30, rel=1e-6)
    assert plan.kv_cache_tokens == pytest.approx(plan.kv_cache_gib * 2**30 / (28 * 1024), abs=16)
    higher, _ = plan_memory(cfg.model, cfg.hardware, _knobs(cfg, gpu_memory_utilization=0.95))
    assert higher.kv_cache_tokens > plan.kv_cache_tokens
    bigger_budget, _ = plan_memory(
        cfg.model, cfg.hardware, _knobs(cfg, max_num_batched_tokens=8192)
    )
    assert bigger_budget.activation_gib > plan.activation_gib


def test_tensor_parallelism_shards_weights_and_kv_heads(compose) -> None:
    cfg = compose("model=llama-3.1-8b", "hardware=4xl4-24gb", "space.tensor_parallel_size=[1,2,4]")
    one, two = (plan_memory(cfg.model, cfg.hardware, _knobs(cfg, tensor_parallel_size=tp))[0]
                for tp in (1, 2))  # fmt: skip
    assert two.weights_gib == pytest.approx(one.weights_gib / 2)
    assert two.activation_gib < one.activation_gib
    # each GPU holds 4 of the 8 KV heads of every token, in more free memory
    assert kv_bytes_per_token(cfg.model, "auto", 2) == kv_bytes_per_token(cfg.model) / 2
    assert two.num_blocks == int(two.kv_cache_gib * 2**30 // (64 * 1024 * 16))
    assert two.kv_cache_tokens > 4 * one.kv_cache_tokens


@pytest.mark.parametrize(
    ("overrides", "knobs", "category", "subcause", "text"),
    [
        (
            ["model=llama-3.1-8b", "hardware=l4-24gb"],
            {"gpu_memory_utilization": 0.6},
            CrashCategory.OOM,
            "no_kv_cache_memory",
            "No available memory for the cache blocks",
        ),
        (
            ["model=llama-3.1-8b", "hardware=l4-24gb"],
            {"gpu_memory_utilization": 0.72},
            CrashCategory.OOM,
            "kv_cache_too_small",
            "To serve at least one request with the model's max seq len (4096)",
        ),
        (
            ["hardware=l4-24gb", "model=llama-3.1-8b"],
            {"gpu_memory_utilization": 0.99},
            CrashCategory.OOM,
            "insufficient_free_memory",
            "less than desired GPU memory utilization",
        ),
        (
            [],
            {
                "enable_chunked_prefill": False,
                "max_num_batched_tokens": 512,
                "max_model_len": 4096,
            },
            CrashCategory.CONFIG,
            "batched_tokens_below_max_model_len",
            "max_num_batched_tokens (512) is smaller than max_model_len (4096)",
        ),
        (
            [],
            {"max_num_batched_tokens": 64, "max_num_seqs": 128},
            CrashCategory.CONFIG,
            "batched_tokens_below_num_seqs",
            "must be greater than or equal to max_num_seqs (128)",
        ),
        (
            ["model=tiny-random"],
            {"max_model_len": 8192},
            CrashCategory.CONFIG,
            "max_model_len_too_large",
            "User-specified max_model_len (8192) is greater than the derived max_model_len",
        ),
        (
            ["space.long_prefill_token_threshold=[0,2048]"],
            {"max_model_len": 1024, "long_prefill_token_threshold": 2048},
            CrashCategory.CONFIG,
            "long_prefill_threshold_above_max_model_len",
            "long_prefill_token_threshold (2048) cannot be greater than the max_model_len (1024)",
        ),
        (
            ["hardware=cpu", "model=tiny-random"],
            {"quantization": "awq"},
            CrashCategory.CONFIG,
            "quantization_unsupported",
            "quantization method awq",
        ),
        (
            ["model=llama-3.1-8b", "hardware=4xh100-80gb", "space.tensor_parallel_size=[1,3]"],
            {"tensor_parallel_size": 3},
            CrashCategory.CONFIG,
            "parallelism_invalid",
            "Total number of attention heads (32) must be divisible by tensor parallel size (3)",
        ),
        (
            ["model=llama-3.1-8b", "hardware=h100-80gb", "space.tensor_parallel_size=[1,2]"],
            {"tensor_parallel_size": 2},
            CrashCategory.CONFIG,
            "parallelism_invalid",
            "World size (2) is larger than the number of available GPUs (1) in this node",
        ),
        (
            [
                "hardware=4xh100-80gb",
                "space.tensor_parallel_size=[2]",
                "space.data_parallel_size=[4]",
            ],
            {"tensor_parallel_size": 2, "data_parallel_size": 4},
            CrashCategory.CONFIG,
            "parallelism_invalid",
            'CUDA_VISIBLE_DEVICES: local range: [4, 6) base value: "0,1,2,3"',
        ),
        (
            ["hardware=4xh100-80gb", "space.tensor_parallel_size=[1,3]"],  # 12 heads, 2 KV heads
            {"tensor_parallel_size": 3},
            CrashCategory.CONFIG,
            "parallelism_invalid",
            "AssertionError: 3 is not divisible by 2",
        ),
    ],
)
def test_startup_refusals_read_like_vllm(
    compose, overrides, knobs, category, subcause, text
) -> None:
    cfg = compose(*overrides)
    plan, crash = plan_memory(cfg.model, cfg.hardware, _knobs(cfg, **knobs))
    assert plan is None
    assert (crash.category, crash.subcause, crash.phase) == (category, subcause, "startup")
    assert text in crash.evidence
    again = classify(crash.evidence, 1, phase="startup")  # as a real server's log would read
    assert (again.category, again.subcause) == (category, subcause)


def test_an_fp8_kv_cache_holds_twice_the_tokens_and_is_refused_below_sm89(compose) -> None:
    """--kv-cache-dtype fp8: one byte an element; a T4 (SM 7.5) has no backend that takes it."""
    cfg = compose("space.kv_cache_dtype=[auto,fp8]")
    auto, _ = plan_memory(cfg.model, cfg.hardware, _knobs(cfg))
    fp8, _ = plan_memory(cfg.model, cfg.hardware, _knobs(cfg, kv_cache_dtype="fp8"))
    assert fp8.kv_cache_gib == pytest.approx(auto.kv_cache_gib)  # the same memory ...
    assert fp8.num_blocks == pytest.approx(2 * auto.num_blocks, abs=1)  # ... twice the tokens
    t4 = compose("hardware=t4-16gb", "space.kv_cache_dtype=[auto,fp8]")
    plan, crash = plan_memory(t4.model, t4.hardware, _knobs(t4, kv_cache_dtype="fp8"))
    assert plan is None and crash is not None
    assert (crash.category, crash.subcause) == (CrashCategory.CONFIG, "kv_cache_dtype_unsupported")
    assert "FP8 KV cache is not supported by the Triton attention backend" in crash.evidence
    assert plan_memory(t4.model, t4.hardware, _knobs(t4))[1] is None  # auto starts


def test_a_block_size_rounds_the_kv_cache_and_is_refused_off_the_kernels_multiple(compose) -> None:
    """--block-size: the cache is whole blocks; CUDA kernels take multiples of 16, the CPU 32."""
    cfg = compose("space.block_size=[16,8,32,128]")
    plans = {
        b: plan_memory(cfg.model, cfg.hardware, _knobs(cfg, block_size=b))[0]
        for b in (16, 32, 128)
    }
    for block, plan in plans.items():
        assert plan.kv_cache_tokens == plan.num_blocks * block
        assert 0 <= plans[16].kv_cache_tokens - plan.kv_cache_tokens < block  # the same memory
    plan, crash = plan_memory(cfg.model, cfg.hardware, _knobs(cfg, block_size=8))
    assert plan is None and crash is not None
    assert (crash.category, crash.subcause) == (
        CrashCategory.CONFIG,
        "attention_backend_unsupported",
    )
    assert "No valid attention backend found for cuda" in crash.evidence
    assert (
        "block_size=8" in crash.evidence
        and "FLASH_ATTN: [block_size not supported]" in crash.evidence
    )
    again = classify(crash.evidence, 1, phase="startup")  # as a real server's log would read
    assert (again.category, again.subcause) == (crash.category, crash.subcause)
    # the CPU build's kernels take multiples of 32, and it says so in its own words
    cpu = compose("hardware=cpu", "model=tiny-random", "space=cpu-small")
    space = SearchSpace.from_config(cpu.space)
    knobs = space.repair(space.complete({}), cpu.model.max_position_embeddings).config
    for block, refused in ((8, True), (48, True), (64, False), (128, False)):
        crash = plan_memory(cpu.model, cpu.hardware, {**knobs, "block_size": block})[1]
        assert (crash is not None) == refused, block
    refusal = plan_memory(cpu.model, cpu.hardware, {**knobs, "block_size": 8})[1]
    assert (
        refusal.evidence == "ValueError: No common block size for 8 (CPU_ATTN: [MultipleOf(32)])."
    )
    plan = plan_memory(cpu.model, cpu.hardware, knobs)[0]
    assert plan.block_size == 128  # the CPU build's default
    # vLLM's max concurrency: whole blocks per max_model_len request (1000 tokens: 8 blocks)
    odd = plan_memory(cpu.model, cpu.hardware, {**knobs, "max_model_len": 1000})[0]
    assert odd.max_concurrency == odd.num_blocks / 8
    guard = MemoryGuard.for_model(cpu.model, cpu.hardware, cpu.hardware.vram_gb)
    assert guard.block_size == 128 and guard.kv_tokens(knobs) == plan.kv_cache_tokens
