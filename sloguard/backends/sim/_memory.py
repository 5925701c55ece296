"""The simulator's memory model and the startup refusals vLLM makes.

vLLM sizes the KV cache as ``gpu_memory_utilization x VRAM - weights - peak activation -
non-torch memory`` after a profiling forward pass of ``max_num_batched_tokens`` tokens; CUDA
graphs and the sampler's sort buffers are allocated outside that budget, which is how a config
that passes the memory probe can still run out of memory under load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sloguard.crash_classifier import CrashCategory, CrashInfo
from sloguard.gpu_profile import (
    GIB,
    activation_bytes,
    kv_bytes_per_token,
    weight_bytes,
)

if TYPE_CHECKING:
    from sloguard.config import HardwareConfig, ModelConfig


def cudagraph_capture_sizes(max_num_seqs: int, hw: HardwareConfig) -> int:
    """How many batch sizes vLLM captures: 1, 2, 4, then multiples of 8 up to its limit."""
    limit = min(2 * max_num_seqs, hw.cudagraph_max_tokens)
    return sum(1 for s in (1, 2, 4) if s <= limit) + limit // 8


def cudagraph_bytes(model: ModelConfig, hw: HardwareConfig, knobs: dict[str, Any]) -> float:
    """Memory CUDA graphs hold, growing with the captured sizes and the model's width x depth."""
    if knobs["enforce_eager"] or not hw.supports_cudagraphs:
        return 0.0
    scale = model.hidden_size * model.num_layers / (4096 * 32)
    return (0.05 + 0.006 * cudagraph_capture_sizes(knobs["max_num_seqs"], hw) * scale) * GIB


def sampler_spike_bytes(model: ModelConfig, max_num_seqs: int) -> float:
    """Transient top-p/top-k sort buffers of a full batch (fp32 logits, probs, int64 indices)."""
    return max_num_seqs * model.vocab_size * 16.0


@dataclass(frozen=True)
class MemoryPlan:
    """Where the device memory goes for one configuration (GiB), and the KV cache it leaves."""

    total_gib: float
    budget_gib: float
    weights_gib: float
    activation_gib: float
    non_torch_gib: float
    cudagraph_gib: float
    kv_cache_gib: float
    kv_cache_tokens: int
    num_blocks: int
    max_concurrency: float  # requests of max_model_len the KV cache holds at once
    block_size: int  # tokens per KV block

    def to_dict(self) -> dict[str, float]:
        return {k: round(float(v), 4) for k, v in self.__dict__.items()}


def plan_memory(
    model: ModelConfig, hw: HardwareConfig, knobs: dict[str, Any]
) -> tuple[MemoryPlan | None, CrashInfo | None]:
    """Plan memory at startup the way vLLM does; return the plan or the refusal.

    Refusals carry vLLM's own message text as evidence, so the sim's crashes read like the
    real server's logs and go through the same taxonomy.
    """
    refusal = _config_refusal(model, hw, knobs)
    if refusal:
        return None, refusal
    total = hw.vram_gb * GIB
    free = total - hw.used_by_others_gb * GIB
    util = knobs["gpu_memory_utilization"]
    budget = util * total
    if budget > free:
        return None, _oom(
            "insufficient_free_memory",
            f"ValueError: Free memory on device ({free / GIB:.2f}/{total / GIB:.2f} GiB) on "
            f"startup is less than desired GPU memory utilization ({util:.2f}, "
            f"{budget / GIB:.2f} GiB). Decrease GPU memory utilization or reduce GPU memory "
            "used by other processes.",
        )
    tp = knobs.get("tensor_parallel_size", 1)
    weights = weight_bytes(model, knobs["quantization"], tp)
    if weights > free:
        return None, _oom(
            "weights_do_not_fit",
            f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate "
            f"{weights / GIB:.2f} GiB while loading weights. GPU 0 has a total capacity of "
            f"{total / GIB:.2f} GiB",
        )
    activation = activation_bytes(
        model, knobs["max_num_batched_tokens"], knobs["max_num_seqs"], tp
    )
    non_torch = hw.non_torch_memory_gb * GIB
    kv = budget - weights - activation - non_torch
    per_token = kv_bytes_per_token(model, knobs.get("kv_cache_dtype", "auto"), tp)
    if kv <= 0:
        return None, _oom(
            "no_kv_cache_memory",
            "ValueError: No available memory for the cache blocks. Try increasing "
            "`gpu_memory_utilization` when initializing the engine.",
        )
    block = knobs.get("block_size", hw.block_size)
    num_blocks = int(kv // (per_token * block))
    tokens = num_blocks * block
    max_len = knobs["max_model_len"]
    if tokens < max_len:
        return None, _oom(
            "kv_cache_too_small",
            f"ValueError: To serve at least one request with the model's max seq len "
            f"({max_len}), ({max_len * per_token / GIB:.2f} GiB KV cache is needed, which is "
            f"larger than the available KV cache memory ({kv / GIB:.2f} GiB). Based on the "
            f"available memory, the estimated maximum model length is {tokens}. Try increasing "
            "`gpu_memory_utilization` or decreasing `max_model_len` when initializing the "
            "engine.",
        )
    graphs = cudagraph_bytes(model, hw, knobs)
    if budget + graphs > free:
        return None, _oom(
            "cudagraph_capture",
            f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate "
            f"{graphs / GIB:.2f} GiB during CUDA graph capture. GPU 0 has a total capacity "
            f"of {total / GIB:.2f} GiB of which {(free - budget) / GIB:.2f} GiB is free.",
        )
    plan = MemoryPlan(
        total_gib=total / GIB,
        budget_gib=budget / GIB,
        weights_gib=weights / GIB,
        activation_gib=activation / GIB,
        non_torch_gib=non_torch / GIB,
        cudagraph_gib=graphs / GIB,
        kv_cache_gib=kv / GIB,
        kv_cache_tokens=tokens,
        num_blocks=num_blocks,
        # vLLM 0.32 kv_cache_utils.get_max_concurrency_for_kv_cache_config: whole blocks each
        max_concurrency=num_blocks / -(-max_len // block),
        block_size=block,
    )
    return plan, None


def load_oom(
    model: ModelConfig, hw: HardwareConfig, knobs: dict[str, Any], plan: MemoryPlan
) -> CrashInfo | None:
    """The OOM that strikes under load, after the memory probe passed.

    Under varying batch shapes the caching allocator fragments and grows past what profiling
    saw, and a full batch allocates the sampler's sort buffers; both live outside the
    ``gpu_memory_utilization`` budget, in the headroom above it.
    """
    free = (hw.vram_gb - hw.used_by_others_gb) * GIB
    used = (plan.budget_gib + plan.cudagraph_gib) * GIB
    spike = (
        sampler_spike_bytes(model, knobs["max_num_seqs"])
        + hw.fragmentation_frac * hw.vram_gb * GIB
    )
    if used + spike <= free:
        return None
    return CrashInfo(
        CrashCategory.OOM,
        "oom_under_load",
        f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate {spike / GIB:.2f} GiB. "
        f"GPU 0 has a total capacity of {hw.vram_gb:.2f} GiB of which "
        f"{max(free - used, 0) / GIB:.2f} GiB is free.",
        phase="load",
    )


def startup_seconds(model: ModelConfig, hw: HardwareConfig, knobs: dict[str, Any]) -> float:
    """Modelled server start: engine init, weight load, profiling, graph capture."""
    load = weight_bytes(model, knobs["quantization"]) / (hw.load_gbps * 1e9)
    capture = (
        0.0
        if knobs["enforce_eager"]
        else 0.05 * cudagraph_capture_sizes(knobs["max_num_seqs"], hw)
    )
    return 8.0 + load + 2.0 + capture


def _config_refusal(
    model: ModelConfig, hw: HardwareConfig, knobs: dict[str, Any]
) -> CrashInfo | None:
    """The first of vLLM 0.32's startup refusals, in the order it makes them: the model's
    config, the parallel config, the scheduler's limits, the model against the parallel
    config, placing the engines on GPUs, building the model and its kernels."""
    checks = (_model_len, _world_size, _scheduler_limits, _heads, _placement, _kernels)
    return next((r for check in checks if (r := check(model, hw, knobs)) is not None), None)


def _model_len(model: ModelConfig, hw: HardwareConfig, knobs: dict[str, Any]) -> CrashInfo | None:
    max_len = knobs["max_model_len"]
    if max_len > model.max_position_embeddings:
        return _config(
            "max_model_len_too_large",
            f"pydantic_core._pydantic_core.ValidationError: User-specified max_model_len "
            f"({max_len}) is greater than the derived max_model_len "
            f"(max_position_embeddings={model.max_position_embeddings} in model's config.json).",
        )
    return None


def _world_size(model: ModelConfig, hw: HardwareConfig, knobs: dict[str, Any]) -> CrashInfo | None:
    """More GPUs to a tensor-parallel engine than the node has (``ParallelConfig``)."""
    tp = knobs.get("tensor_parallel_size", 1)
    if tp > hw.gpus_per_trial:
        return _config(
            "parallelism_invalid",
            f"ValueError: World size ({tp}) is larger than the number of available GPUs "
            f"({hw.gpus_per_trial}) in this node.",
        )
    return None


def _scheduler_limits(
    model: ModelConfig, hw: HardwareConfig, knobs: dict[str, Any]
) -> CrashInfo | None:
    max_len, tokens = knobs["max_model_len"], knobs["max_num_batched_tokens"]
    if tokens < knobs["max_num_seqs"]:
        return _config(
            "batched_tokens_below_num_seqs",
            f"ValueError: max_num_batched_tokens ({tokens}) must be greater than or equal to "
            f"max_num_seqs ({knobs['max_num_seqs']}).",
        )
    if not knobs["enable_chunked_prefill"] and tokens < max_len:
        return _config(
            "batched_tokens_below_max_model_len",
            f"pydantic_core._pydantic_core.ValidationError: max_num_batched_tokens ({tokens}) is "
            f"smaller than max_model_len ({max_len}). This effectively limits the maximum "
            "sequence length to max_num_batched_tokens and makes vLLM reject longer sequences. "
            "Please increase max_num_batched_tokens or decrease max_model_len.",
        )
    threshold = knobs.get("long_prefill_token_threshold", 0)
    if threshold > max_len:  # vLLM 0.32 config/scheduler.py SchedulerConfig.verify_max_model_len
        return _config(
            "long_prefill_threshold_above_max_model_len",
            f"ValueError: long_prefill_token_threshold ({threshold}) cannot be greater than the "
            f"max_model_len ({max_len}).",
        )
    return None


def _heads(model: ModelConfig, hw: HardwareConfig, knobs: dict[str, Any]) -> CrashInfo | None:
    """Attention heads the tensor-parallel size does not divide
    (``ModelConfig.verify_with_parallel_config``)."""
    heads, tp = model.num_attention_heads, knobs.get("tensor_parallel_size", 1)
    if heads % tp:
        return _config(
            "parallelism_invalid",
            f"ValueError: Total number of attention heads ({heads}) must be divisible by "
            f"tensor parallel size ({tp}).",
        )
    return None


def _placement(model: ModelConfig, hw: HardwareConfig, knobs: dict[str, Any]) -> CrashInfo | None:
    """Data-parallel engines past the GPUs the trial's ``CUDA_VISIBLE_DEVICES`` lists
    (``v1/engine/utils.py get_physical_gpu_ids_for_local_dp_rank``); KV heads the
    tensor-parallel size neither divides nor is a multiple of (``QKVParallelLinear`` through
    ``distributed/utils.py divide``, as the model is built)."""
    tp, dp = knobs.get("tensor_parallel_size", 1), knobs.get("data_parallel_size", 1)
    if tp * dp > hw.gpus_per_trial:
        rank = hw.gpus_per_trial // tp  # the first engine whose GPUs are not there
        visible = ",".join(str(i) for i in range(hw.gpus_per_trial))
        return _config(
            "parallelism_invalid",
            f"Exception: Error computing device indices for CUDA_VISIBLE_DEVICES: local range: "
            f'[{rank * tp}, {(rank + 1) * tp}) base value: "{visible}"',
        )
    kv_heads = model.num_kv_heads
    big, small = (tp, kv_heads) if tp >= kv_heads else (kv_heads, tp)
    if big % small:
        return _config("parallelism_invalid", f"AssertionError: {big} is not divisible by {small}")
    return None


def _kernels(model: ModelConfig, hw: HardwareConfig, knobs: dict[str, Any]) -> CrashInfo | None:
    block = knobs.get("block_size", hw.block_size)
    kv_dtype = knobs.get("kv_cache_dtype", "auto")
    if block % hw.block_size_multiple:
        return _config("attention_backend_unsupported", _block_refusal(model, hw, block, kv_dtype))
    if kv_dtype not in hw.kv_cache_dtypes:
        return _config(  # vLLM 0.32 triton_attn.py TritonAttentionImpl.__init__ (below SM 8.9)
            "kv_cache_dtype_unsupported",
            f"ValueError: FP8 KV cache is not supported by the Triton attention backend on "
            f"{hw.name}; native FP8 (fp8e4nv) requires SM89+. Re-run with --kv-cache-dtype "
            "float16.",
        )
    if knobs["quantization"] not in hw.quantization:
        return _config(
            "quantization_unsupported",
            f"ValueError: The quantization method {knobs['quantization']} is not supported for "
            f"the current GPU ({hw.name}).",
        )
    return None


_BACKENDS = ("FLASH_ATTN", "FLASHINFER", "TRITON_ATTN", "FLEX_ATTENTION")  # vLLM 0.32, CUDA


def _block_refusal(model: ModelConfig, hw: HardwareConfig, block: int, kv_dtype: str) -> str:
    """vLLM 0.32's words for a block size no attention kernel of the platform takes."""
    if hw.platform == "cpu":  # v1/worker/utils.py select_common_block_size (seen on the CPU)
        return (
            f"ValueError: No common block size for {block} (CPU_ATTN: "
            f"[MultipleOf({hw.block_size_multiple})])."
        )
    reasons = ", ".join(f"{b}: [block_size not supported]" for b in _BACKENDS)
    return (  # platforms/cuda.py get_attn_backend_cls: every backend refuses
        f"ValueError: No valid attention backend found for cuda with AttentionSelectorConfig("
        f"head_size={model.head_dim}, kv_cache_dtype={kv_dtype}, block_size={block}). "
        f"Reasons: {{{reasons}}}."
    )


def _oom(subcause: str, evidence: str) -> CrashInfo:
    return CrashInfo(CrashCategory.OOM, subcause, evidence)


def _config(subcause: str, evidence: str) -> CrashInfo:
    return CrashInfo(CrashCategory.CONFIG, subcause, evidence)
