"""The rules: one per failure site in vLLM (or below it), never one per log excerpt.

Each rule names the raise sites it covers, read from vLLM's source releases 0.2.0 to 0.33.0 (and
from torch, NCCL, Hugging Face Hub and uvicorn where the text is theirs). Wordings changed across
releases; every pattern accepts each of them and tolerates a line cut off or wrapped after its
key words. Rules come in tiers: a line that states a cause beats a generic exception type,
which beats a notice that some process died; within a tier the earlier rule wins, so a cause
that explains another (shared memory behind an NCCL error) comes first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sloguard.crash_classifier._taxonomy import CrashCategory

OOM, CUDA, TIMEOUT = CrashCategory.OOM, CrashCategory.CUDA, CrashCategory.TIMEOUT
CONFIG, INFRA, UNKNOWN = CrashCategory.CONFIG, CrashCategory.INFRA, CrashCategory.UNKNOWN
CAUSE, GENERIC, DEATH = 0, 1, 2  # tiers


@dataclass(frozen=True)
class Rule:
    """A failure site and how its message reads in a log.

    Args:
        category: The taxonomy category.
        subcause: The machine-readable cause.
        pattern: Matches the message (case-insensitive), from its key words on.
        sites: Where it is raised (vLLM ``file:function``, or the library that words it).
        tier: ``CAUSE``, ``GENERIC`` or ``DEATH``.
        context_ok: Whether an INFO/WARNING line may carry it (a few causes are only logged).
        detail: A line just after the match that holds the message (pydantic's header line
            ``1 validation error for ModelConfig`` is followed by ``Value error, <message>``).
    """

    category: CrashCategory
    subcause: str
    pattern: re.Pattern[str]
    sites: tuple[str, ...]
    tier: int = CAUSE
    context_ok: bool = False
    detail: re.Pattern[str] | None = None


def _rule(
    category: CrashCategory,
    subcause: str,
    pattern: str,
    *sites: str,
    tier: int = CAUSE,
    context_ok: bool = False,
    detail: str | None = None,
) -> Rule:
    return Rule(
        category,
        subcause,
        re.compile(pattern, re.IGNORECASE),
        sites,
        tier,
        context_ok,
        re.compile(detail) if detail else None,
    )


RULES: tuple[Rule, ...] = (
    # -- infrastructure: not the configuration's fault; first, as they explain what follows
    _rule(
        INFRA, "shm_too_small",
        r"(creating|attaching to) shared memory segment|/dev/shm\b.*(only|too small|no space)"
        r"|\bSIGBUS\b|Fatal Python error: Bus error",
        "NCCL shared-memory transport (ncclSystemError)", "Ray object store / plasma",
    ),
    _rule(
        INFRA, "disk_full",
        r"No space left on device|\[Errno 28\]|Disk quota exceeded|\[Errno 122\]",
        "the OS (ENOSPC, EDQUOT) while writing weights, caches or compile artifacts",
    ),
    _rule(
        INFRA, "port_in_use",
        r"address already in use|EADDRINUSE|\[Errno (98|48)\]|port \d+ is (already )?used",
        "uvicorn bind (api_server)", "vllm/utils get_open_port", "torch TCPStore", "zmq bind",
    ),
    _rule(
        INFRA, "model_unreachable",
        r"OfflineModeIsEnabled|offline mode is enabled|couldn't connect to 'https?://huggingface"
        r"|Cannot reach https?://|Repo id must (be in the form|use alphanumeric)"
        r"|is not a local folder and is not a valid model identifier"
        r"|Invalid repository ID or local directory|RepositoryNotFoundError|GatedRepoError"
        r"|gated repo|(401|403) Client Error|LocalEntryNotFoundError"
        r"|Cannot find the requested files in the (local )?(disk )?cache"
        r"|Cache directory not found|Temporary failure in name resolution"
        r"|Max retries exceeded with url: .*huggingface"
        r"|does not appear to have a file named config\.json",
        "huggingface_hub hf_hub_download / snapshot_download / validate_repo_id",
        "transformers AutoConfig.from_pretrained", "vllm/transformers_utils/config.py",
    ),
    _rule(
        INFRA, "permission_denied",
        r"PermissionError|Permission denied|\[Errno 13\]|getpwuid\(\): uid not found",
        "the OS (EACCES) on caches, model folders, /dev/shm", "getpass/pwd in torch inductor",
    ),
    # -- memory: the KV cache, startup checks, named OOM sites, then raw allocator errors
    _rule(
        OOM, "kv_cache_too_small",
        r"max seq len \(\d*|To serve at least one request with the models?'?s? max seq"
        r"|Cannot auto-fit max_model_len|maximum number of tokens that can be stored in KV",
        "v0.2.7-0.10.2 llm_engine._init_cache / worker.raise_if_cache_size_invalid / "
        "cpu_worker._validate_num_cpu_blocks: The model's max seq len (N) is larger than ...",
        "v0.7-0.33 v1/core/kv_cache_utils|kv_cache_planning._check_enough_kv_cache_memory: "
        "To serve at least one request with the models's|model's max seq len ...",
        "v0.14+ kv_cache_planning._auto_fit_max_model_len",
    ),
    _rule(
        OOM, "no_kv_cache_memory",
        r"No available memory for the cache blocks|Available memory on node \d+ .* on kv cache"
        r" allocation is less than"
        r"|The worker already uses .* leaving none for the KV cache"
        r"|Invalid environment variable VLLM_CPU_KVCACHE_SPACE",
        "llm_engine._init_cache, worker.raise_if_cache_size_invalid, "
        "v1 kv_cache_utils._check_enough_kv_cache_memory",
        "v1/worker/cpu_worker.py CPUWorker.__init__ / determine_available_memory (v0.20+)",
    ),
    _rule(
        OOM, "no_kv_cache_memory",
        r"Available KV cache memory: -\d",
        "v1/worker/gpu_worker.py determine_available_memory (logged before the refusal)",
        context_ok=True,
    ),
    _rule(
        OOM, "insufficient_free_memory",
        r"Free memory on device .*is less than (desired GPU memory utilization|the engine's)"
        r"|Externally held weights on device .* exceed the desired GPU memory utilization"
        r"|Error in memory profiling|Available memory on node \d+ .* on startup is less than",
        "v1/worker/gpu_worker.py Worker.init_device (v0.9.1-0.13)",
        "v1/worker/cpu_worker.py CPUWorker.__init__ (v0.20+, the CPU build's startup check)",
        "v1/worker/utils.py request_memory (v0.14+)",
        "worker.determine_num_available_blocks / gpu_worker.determine_available_memory",
    ),
    _rule(
        OOM, "sampler_warmup",
        r"out of memory occurred when warming up (sampler|pooler)",
        "v1/worker/gpu_model_runner.py _dummy_sampler_run / _dummy_pooler_run (v0.8+)",
    ),
    _rule(
        OOM, "weights_do_not_fit",
        r"Failed to load model - not enough GPU memory|Failed to create unquantized linear"
        r" weights|may be caused by insufficient memory to allocate",
        "v1/worker/gpu_model_runner.py GPUModelRunner.load_model (v0.13+)",
        "model_executor/layers/linear.py UnquantizedLinearMethod.create_weights (v0.11)",
    ),
    _rule(
        OOM, "device_oom",
        r"OutOfMemoryError|\b(CUDA|NPU|XPU|HIP|MPS) out of\b|CUDA error: out of memory"
        r"|\bcudaErrorMemoryAllocation\b|RESOURCE_EXHAUSTED",
        "torch caching allocator (torch.OutOfMemoryError, torch.cuda.OutOfMemoryError, "
        "RuntimeError: CUDA out of memory); raw in every vLLM release: the phase is read from "
        "the traceback (profile_run, capture_model, load_model, _dummy_sampler_run)",
    ),
    _rule(
        OOM, "host_oom",
        r"DefaultCPUAllocator: can't allocate memory|std::bad_alloc|Cannot allocate memory"
        r"|\bMemoryError\b|node (is )?running low on memory|killed due to (the node running )?"
        r"low memory|OOM killer (killed|terminated)|Out of memory: Killed process",
        "torch CPU allocator", "the kernel's OOM killer (dmesg)", "Ray memory monitor",
    ),
    # -- the device
    _rule(
        CUDA, "illegal_memory_access",
        r"illegal memory access|cudaErrorIllegalAddress|misaligned address",
        "CUDA runtime (cudaErrorIllegalAddress, cudaErrorMisalignedAddress) via torch",
    ),
    _rule(
        CUDA, "device_side_assert",
        r"device-side assert(?!ions)|cudaErrorAssert",
        "CUDA runtime (cudaErrorAssert) via torch",
    ),
    _rule(
        CUDA, "no_kernel_image",
        r"no kernel image is available|cudaErrorNoKernelImageForDevice",
        "CUDA runtime: the build does not cover this GPU's architecture",
    ),
    _rule(
        CUDA, "driver_error",
        r"driver version is insufficient|cudaGetDeviceCount|system not yet initialized"
        r"|Error 80[2-4]|NVIDIA driver on your system is too old|Found no NVIDIA driver"
        r"|no CUDA-capable device|No CUDA GPUs are available|CUDA driver initialization failed"
        r"|fallen off the bus|\bXid\b|PTX was compiled with an unsupported toolchain"
        r"|cudaErrorUnsupportedPtxVersion",
        "torch.cuda _lazy_init / set_device in worker init_device (all releases)",
    ),
    _rule(
        CUDA, "nccl_error",
        r"NCCL error|nccl(System|Internal|UnhandledCuda|InvalidUsage|Remote)Error"
        r"|ProcessGroupNCCL|DistBackendError|Watchdog caught collective operation timeout"
        r"|NCCL WARN|Failed to load NCCL library",
        "distributed/device_communicators/pynccl_wrapper.py NCCLLibrary.NCCL_CHECK (v0.4.3+), "
        "pynccl.py PyNcclCommunicator.__init__ (communicator creation)",
        "torch ProcessGroupNCCL (init_distributed_environment, first collective)",
    ),
    _rule(
        CUDA, "cublas_error",
        r"CUBLAS_STATUS|CUDNN_STATUS|cuDNN error",
        "cuBLAS/cuDNN via torch",
    ),
    _rule(
        CUDA, "cuda_error",
        r"\bCUDA error(?!s)|cudaError\w+|AcceleratorError|unspecified launch failure|HIP error"
        r"|hipError\w+",
        "CUDA runtime via torch (RuntimeError/torch.AcceleratorError: CUDA error: ...)",
    ),
    # -- configurations vLLM refuses
    _rule(
        CONFIG, "max_model_len_too_large",
        r"User-specified max_model_len \(\d+\) is greater than",
        "config.py|config/model.py _get_and_verify_max_len (all releases)",
    ),
    _rule(
        CONFIG, "batched_tokens_below_max_model_len",
        r"max_num_batched_tokens \(\d+\) is smaller than max_model_len",
        "config.py SchedulerConfig._verify_args, config/scheduler.py verify_max_model_len",
    ),
    _rule(
        CONFIG, "long_prefill_threshold_above_max_model_len",
        r"long_prefill_token_threshold \(\d+\) cannot be greater than the max_model_len",
        "config/scheduler.py SchedulerConfig.verify_max_model_len (0.32; 0.11: _verify_args)",
    ),
    _rule(
        CONFIG, "batched_tokens_below_num_seqs",
        r"max_num_batched_tokens \(\d+\) must be greater than or equal to max_num_seqs",
        "config.py SchedulerConfig._verify_args, config/scheduler.py",
    ),
    _rule(
        CONFIG, "quantization_unsupported",
        r"quantization method \S+ is not supported|Unknown quantization method"
        r"|Quantization method specified in the model config|Quantization scheme is not "
        r"supported|is not supported for quantization method|quantization is currently not "
        r"supported in|does not support (\S+ )?quantization",
        "config _get_quantization_config (capability), ModelConfig._verify_quantization",
        "platforms/interface.py Platform.verify_quantization",
    ),
    _rule(
        CONFIG, "parallelism_invalid",
        r"must be divisible by (tensor|pipeline) parallel size|\d+ is not divisible by \d+"
        r"|not divisible by group_size|number of required GPUs exceeds|set tensor_parallel_size"
        r" \(\d+\) to less than|Pipeline parallelism is (not|only) supported"
        r"|World size \(\d+\) is larger than the number of available GPUs"
        r"|Error computing device indices for",
        "ModelConfig.verify_with_parallel_config", "distributed/utils.py ensure_divisibility",
        "executors: GPU count checks",
        "config/parallel.py ParallelConfig.__post_init__ (0.32: world size over the GPUs)",
        "v1/engine/utils.py get_physical_gpu_ids_for_local_dp_rank (0.32: DP past the GPUs)",
    ),
    _rule(
        CONFIG, "kv_cache_dtype_unsupported",
        r"FP8 KV cache (is not supported|requires|on CPU requires)"
        r"|does not support fp8 kv-cache|fp8 kv-cache is not supported",
        "v1/attention/backends/triton_attn.py TritonAttentionImpl.__init__ (0.32: below SM89)",
        "v1/attention/backends/cpu_attn.py _get_attn_isa (0.32: no AVX-512/AMX, head size)",
        "v1/attention/backends/flash_attn.py (0.11: 'does not support fp8 kv-cache')",
    ),
    _rule(
        CONFIG, "attention_backend_unsupported",
        r"No valid attention backend found|Selected backend \S+ is not valid for"
        r"|No common block size for \d+",
        "platforms/cuda.py CudaPlatform.get_attn_backend_cls (0.32: every backend refuses)",
        "v1/worker/utils.py select_common_block_size (0.32: no kernel takes the block size)",
    ),
    _rule(
        CONFIG, "dtype_unsupported",
        r"Bfloat16 is only supported on GPUs with compute capability"
        r"|compute capability below \d[.\d]* (is|are) not supported"
        r"|is not supported for (the current|this) GPU|--dtype=half",
        "worker._check_if_gpu_supports_dtype, platforms/cuda.py check_if_supports_dtype",
    ),
    _rule(
        CONFIG, "bad_argument",
        r"error: unrecognized arguments|error: argument |invalid choice"
        r"|the following arguments are required|should provide the model as a positional",
        "argparse in vllm/entrypoints/cli and openai/api_server",
    ),
    # -- hangs at startup
    _rule(
        TIMEOUT, "engine_start_timeout",
        r"Timed out waiting for (new )?engines? to send ?initial message"
        r"|Timed out waiting for (new )?engine core processes to start"
        r"|RPCServer process died before responding to readiness probe"
        r"|Timed out waiting for engine core",
        "v1/engine/core_client.py MPClient.__init__ (v0.9.1+; 'sendinitial' 0.9.1-0.13)",
        "openai/api_server.py build_async_engine_client (v0.5.5-0.6)",
    ),
    _rule(
        TIMEOUT, "distributed_init_timeout",
        r"DistStoreError|client socket has timed out|wait timeout after \d+ ?ms"
        r"|Timed out after \d+ seconds waiting for clients|placement group.*(timed out|pending)",
        "torch.distributed TCPStore/rendezvous in init_distributed_environment",
        "Ray placement group creation (ray_utils.initialize_ray_cluster)",
    ),
    # -- generic: vLLM validates arguments with ValueError / pydantic
    _rule(  # torch's boilerplate after a CUDA error: a CUDA error, but the line naming it wins
        CUDA, "cuda_error",
        r"CUDA kernel errors might be asynchronously reported",
        "c10/cuda/CUDAException.cpp c10_cuda_check_implementation (the message's hint)",
        tier=GENERIC,
    ),
    _rule(
        CONFIG, "invalid_value",
        r"\bValidationError\b|Value error, |\bValueError\b:",
        "config/* __post_init__ and pydantic validators (v0.9.1+: 'Value error, <message>')",
        tier=GENERIC,
        detail=r"^Value error, |\[type=",
    ),
    # -- somebody died: the cause is elsewhere (or nowhere) in the log
    _rule(
        OOM, "host_oom",
        r"killed by SIGKILL by OOM killer",
        "Ray's worker-death report, whose first listed cause is the kernel's OOM killer (the "
        "usual one when a worker dies without a traceback); any cause in the log wins over it",
        tier=DEATH,
    ),
    _rule(
        UNKNOWN, "engine_dead",
        r"EngineDeadError|EngineCore encountered (an issue|a fatal error)"
        r"|Engine process \(pid \d+\) died|Background loop has errored",
        "v1/engine/exceptions.py EngineDeadError (v0.8.5+)", "engine/async_llm_engine.py",
        tier=DEATH,
    ),
    _rule(
        UNKNOWN, "worker_died",
        r"(Worker proc|RayWorkerProc rank=)\s*\S* died unexpectedly"
        r"|Engine core (proc|process) \S+ died unexpectedly|died with exit code"
        r"|actor (is dead|died)|worker (process )?(has )?died",
        "v1/executor/multiproc_executor.py monitor_workers", "v1/engine utils/core_client",
        "Ray actor death",
        tier=DEATH,
    ),
    _rule(
        UNKNOWN, "engine_start_failed",
        r"(EngineCore|Engine core) initialization failed|EngineCore(Proc)? failed to start"
        r"|EngineCore hit an exception|Engine process failed to start"
        r"|WorkerProc (failed to start|initialization failed)|got fatal signal from worker",
        "v1/engine/core.py run_engine_core", "v1/engine/utils.py wait_for_engine_startup",
        "v1/executor/multiproc_executor.py WorkerProc", "openai/api_server.py (V0 MQLLMEngine)",
        tier=DEATH,
    ),
)  # fmt: skip

# Where in a traceback a raw device OOM happened (frames and progress lines before it)
OOM_PHASES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (subcause, re.compile(pattern, re.IGNORECASE))
    for subcause, pattern in (
        (
            "cudagraph_capture",
            r"capture_model|_capture_cudagraphs|_warmup_and_capture|CUDAGraphWrapper"
            r"|cuda_piecewise_backend|torch\.cuda\.graph|Capturing (CUDA )?graphs"
            r"|(CUDA |cuda)graph capture",
        ),
        ("sampler_warmup", r"_dummy_sampler_run|_dummy_pooler_run|warming up sampler"),
        (
            "profile_run",
            r"profile_run|determine_available_memory|determine_num_available_blocks"
            r"|profile_num_available_blocks",
        ),
        (
            "weights_do_not_fit",
            r"load_model|load_weights|create_weights|model_loader|Loading weights"
            r"|ModelWeightParameter|Parameter\(torch\.empty"
            r"|models/\w+\.py\", line \d+, in __init__",
        ),
    )
)
