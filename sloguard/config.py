"""Typed configuration schema for Hydra and its semantic validation.

The dataclasses below are registered in Hydra's ConfigStore as the schema of ``conf/config.yaml``,
so a misspelled key or a wrongly typed value fails when the configuration is composed. Checks that
a type cannot express (a negative budget, an SLO of zero, a range with ``low > high``) live in
:func:`validate`, which raises :class:`ConfigError` with one line naming the bad value.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sloguard._domain import check_domains, num, text
from sloguard.exceptions import ConfigError

MAX_BLOCK_SIZE = 4096  # tokens per KV block (vLLM: any size > 0; past this, a typo)
MAX_SPEC_TOKENS = 16  # tokens speculated per step (vLLM: any number > 0; past this, a typo)
OBJECTIVES: tuple[str, ...] = ("goodput", "capacity", "capacity_per_gpu", "gpus_for_rate")
# objectives that search the highest rate meeting the attainment target
CAPACITY_OBJECTIVES: tuple[str, ...] = ("capacity", "capacity_per_gpu", "gpus_for_rate")
PLATFORMS: tuple[str, ...] = ("cuda", "cpu")
# the optimizers' names (sloguard.optimizer.OPTIMIZERS builds them), here so that validating a
# command line loads no optimizer library
OPTIMIZER_NAMES: tuple[str, ...] = (
    "random",
    "tpe",
    "tba",
    "tba-tpe",
    "constrained-bo",
    "grid",
    "scoot",
)
SCHEDULERS: tuple[str, ...] = ("vllm", "slos-serve")
KV_CACHE_DTYPES: tuple[str, ...] = ("auto", "fp8")  # vLLM's --kv-cache-dtype (auto: the model's)
SCHEDULING_POLICIES: tuple[str, ...] = ("fcfs", "priority")  # vLLM's --scheduling-policy
TBA_STARTS: tuple[str, ...] = ("random", "defaults")  # tba's first trials
TBA_TPE_ANNEALS: tuple[str, ...] = ("handoff", "budget")  # tba-tpe: what TBA anneals over
PRIORS: tuple[str, ...] = ("none", "sim")  # where a study's prior comes from (sloguard.prior)
ROUTER_NAMES: tuple[str, ...] = ("round-robin", "least-loaded", "slo-aware", "dp-balance")
CONF_DIR = Path(os.environ.get("SLOGUARD_CONF_DIR", Path(__file__).resolve().parents[1] / "conf"))
_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


@dataclass
class ModelConfig:
    """Architecture numbers that decide memory and speed (from the model's config.json)."""

    name: str = text(MISSING)
    path: str = ""  # Hugging Face id or local directory the vllm backend serves
    num_params_b: float = num(MISSING, gt=0, le=10000)  # parameters, billions
    num_layers: int = num(MISSING, ge=1, le=1000)
    hidden_size: int = num(MISSING, ge=1, le=1_000_000)
    intermediate_size: int = num(MISSING, ge=1, le=10_000_000)
    num_attention_heads: int = num(MISSING, ge=1, le=10000)
    num_kv_heads: int = num(MISSING, ge=1, le=10000)
    head_dim: int = num(MISSING, ge=1, le=100_000)
    vocab_size: int = num(MISSING, ge=1, le=100_000_000)
    max_position_embeddings: int = num(MISSING, ge=1, le=100_000_000)
    dtype_bytes: int = num(2, ge=1, le=8)
    # mixture of experts: parameters one token runs through (None: all, a dense model)
    active_params_b: float | None = num(None, gt=0, le=10000)
    source: str = ""  # where the numbers came from: a config.json, or the preset (set on load)


@dataclass
class HardwareConfig:
    """One accelerator: memory, roofline peaks and per-step overheads."""

    name: str = text(MISSING)
    # GiB the engine can see (host memory for the CPU build)
    vram_gb: float = num(MISSING, gt=0, le=100_000)
    peak_tflops: float = num(MISSING, gt=0, le=1_000_000)  # dense fp16 tensor throughput
    mem_bw_gbps: float = num(MISSING, gt=0, le=1_000_000)  # GB/s
    compute_efficiency: float = num(0.7, gt=0, le=1)
    bandwidth_efficiency: float = num(0.85, gt=0, le=1)
    graph_step_overhead_ms: float = num(0.8, ge=0, le=10000)  # per step with CUDA graphs
    # per step in eager mode, plus the per-layer cost
    eager_step_overhead_ms: float = num(1.5, ge=0, le=10000)
    eager_layer_overhead_ms: float = num(0.08, ge=0, le=10000)
    # largest captured batch (vLLM's max capture size)
    cudagraph_max_tokens: int = num(512, ge=1, le=10_000_000)
    non_torch_memory_gb: float = num(0.6, ge=0, le=100_000)  # CUDA context, NCCL, allocator slack
    # memory other processes hold on the device
    used_by_others_gb: float = num(0.0, ge=0, le=100_000)
    fragmentation_frac: float = num(0.03, ge=0, lt=1)  # allocator growth under load, share of VRAM
    load_gbps: float = num(2.0, gt=0)  # weight loading speed at startup, GB/s
    # attention FLOP rate relative to the GEMMs
    attention_efficiency: float = num(1.0, gt=0, le=100)
    # compute time in graph mode relative to eager
    graph_compute_factor: float = num(1.0, gt=0, le=100)
    graphs_dynamic: bool = False  # graphs serve every batch size (CPU torch.compile), not <= 512
    # per sampled sequence per step (sampling, output processing)
    seq_overhead_ms: float = num(0.0, ge=0, le=10000)
    # the same in graph mode; None: seq_overhead_ms
    graph_seq_overhead_ms: float | None = num(None, ge=0, le=10000)
    # frontend: from a request's send until the engine has it
    request_overhead_ms: float = num(0.0, ge=0, le=100_000)
    # frontend: more of that delay per sequence then running
    stream_overhead_ms: float = num(0.0, ge=0, le=100_000)
    # lognormal sigma of per-step time jitter (measured by calibration)
    step_noise: float = num(0.03, ge=0, le=2)
    supports_cudagraphs: bool = True
    quantization: list[str] = field(default_factory=lambda: ["fp16", "fp8", "awq", "gptq"])
    # --kv-cache-dtype values an attention backend on this device accepts (vLLM refuses others)
    kv_cache_dtypes: list[str] = field(default_factory=lambda: ["auto", "fp8"])
    platform: str = "cuda"  # vLLM's platform (cuda or cpu): whose refusals the simulator gives
    # the platform's default --block-size (vLLM 0.32: 16 on CUDA, 128 on the CPU build), and
    # what a --block-size must be a multiple of (the attention kernels: CUDA 16, CPU 32)
    block_size: int = num(16, ge=1, le=MAX_BLOCK_SIZE)
    block_size_multiple: int = num(16, ge=1, le=MAX_BLOCK_SIZE)
    # GPUs each trial's server gets (workers=auto: GPUs / this): tensor x data parallel <= this
    gpus_per_trial: int = num(1, ge=1, le=1024)
    # tensor parallelism: all-reduce bus bandwidth between the GPUs (NCCL's busbw), and the
    # latency of one small all-reduce
    interconnect_gbps: float = num(16.0, gt=0, le=100_000)
    allreduce_latency_us: float = num(25.0, ge=0, le=100_000)


@dataclass
class SloConfig:
    """Latency SLOs: a trial is feasible when both percentiles are within their thresholds."""

    name: str = text("default")
    ttft_ms: float = num(500.0, gt=0)
    itl_ms: float = num(100.0, gt=0)
    percentile: float = num(99.0, gt=0, le=100)
    e2el_ms: float | None = num(None, gt=0)  # optional end-to-end limit per request
    # multi-SLO workloads (workload.classes) and capacity: the share of requests that must meet
    # their own SLOs for a trial to be feasible
    attainment_target: float = num(0.9, gt=0, le=1)


@dataclass
class LengthConfig:
    """A token-length distribution: fixed, uniform or lognormal (from mean and median)."""

    dist: str = "fixed"
    mean: float = num(128.0, gt=0, le=100_000_000)
    # lognormal only; defaults to mean / 1.25
    median: float | None = num(None, gt=0, le=100_000_000)
    low: int = num(1, ge=1)
    high: int = num(4096, ge=1, large=10_000_000)


@dataclass
class RequestClassConfig:
    """One SLO class of a multi-SLO workload (SLOs-Serve): its share, lengths, stages and SLOs.

    A request's TTFT limit is ``ttft_ms``, or ``ttft_slowdown`` times its zero-load TTFT on the
    configured hardware. Its tokens are due at the class's TPOT, cumulatively from the first
    token. Reasoning: ``answer_len`` answer tokens follow the ``output_len`` thinking tokens, due
    at ``answer_tpot_ms``. Tool calling: ``rounds`` prefill/decode rounds; each later round is
    sent ``tool_latency_s`` after the previous one ends, with that round's prompt and output
    plus ``round_prompt_len`` new tokens as its prompt; the last round has the ``final_`` SLOs.
    """

    name: str = text(MISSING)
    weight: float = num(1.0, gt=0)  # share of requests (normalised over the classes)
    prompt_len: LengthConfig | None = None  # null: the workload's
    output_len: LengthConfig | None = None  # null: the workload's
    ttft_ms: float | None = num(None, gt=0)  # absolute TTFT limit ...
    ttft_slowdown: float | None = num(None, gt=0)  # ... or a multiple of the zero-load TTFT
    tpot_ms: float = num(100.0, gt=0)
    answer_len: LengthConfig | None = None  # reasoning: answer tokens after the thinking ones
    answer_tpot_ms: float | None = num(None, gt=0)  # null: tpot_ms
    rounds: int = num(1, ge=1, large=100)  # tool calling: prefill/decode rounds per request
    round_prompt_len: LengthConfig | None = None  # tokens each later round adds (tool output)
    tool_latency_s: float = num(0.0, ge=0, le=86400)
    final_output_len: LengthConfig | None = None  # null: output_len
    final_ttft_ms: float | None = num(None, gt=0)  # the last round's SLOs; null: the class's
    final_ttft_slowdown: float | None = num(None, gt=0)
    final_tpot_ms: float | None = num(None, gt=0)


@dataclass
class WorkloadConfig:
    """Requests a trial serves: lengths, arrivals, count; seeded so every trial sees the same."""

    name: str = text(MISSING)
    num_requests: int = num(200, ge=1, large=100_000)
    prompt_len: LengthConfig = field(default_factory=LengthConfig)
    output_len: LengthConfig = field(default_factory=LengthConfig)
    arrival: str = "closed"  # closed | poisson | gamma | trace
    request_rate: float = num(10.0, gt=0, large=100_000)  # req/s for poisson and gamma
    burstiness: float = num(1.0, gt=0, le=1000)  # gamma shape; 1.0 is Poisson
    # in-flight cap; required for closed, optional for open loops
    concurrency: int = num(0, ge=0, large=100_000)
    # closed loop: spread the first `concurrency` requests over this
    ramp_up_s: float = num(0.0, ge=0, le=86400)
    # tokens of a prefix shared by requests of one group
    shared_prefix_len: int = num(0, ge=0, large=10_000_000)
    num_prefix_groups: int = num(0, ge=0, large=100_000)
    seed: int = num(0, ge=0, le=4_294_967_295)
    # arrival=trace: a CSV of (arrived_at, num_prefill_tokens, num_decode_tokens) or the Azure
    # columns (TIMESTAMP, ContextTokens, GeneratedTokens)
    trace_path: str | None = None
    # multiplies the gaps: 0.5 replays at twice the rate
    trace_time_scale: float = num(1.0, gt=0, le=1_000_000)
    trace_start_s: float = num(0.0, ge=0)  # skip the trace's first seconds
    # multi-SLO: request classes with their own SLOs (empty: the slo group judges every request)
    classes: list[RequestClassConfig] = field(default_factory=list)


@dataclass
class OptimizerConfig:
    """Which optimizer proposes configurations, and its settings."""

    name: str = text(MISSING)
    n_startup_trials: int = num(5, ge=0)  # tpe, constrained-bo: random trials before the model
    # tba and tba-tpe (null: the optimizer's default)
    n_initial: int | None = num(None, ge=1)
    n_candidates: int | None = num(None, ge=1, large=100_000)
    t0: float | None = num(None, ge=0, le=1000)
    oob_gate: float | None = num(None, ge=0, le=1)
    crash_threshold: float | None = num(None, ge=0, le=1)
    gamma: float | None = num(None, gt=0, le=1)
    min_trials: int | None = num(None, ge=1)
    crash_rate: float | None = num(None, gt=0, le=1)
    start: str | None = None  # "random" draws, or "defaults" (vLLM's) as the first trial
    bound_jump: float | None = num(None, ge=0, le=1)  # a moved numeric knob jumps to a bound
    # tba-tpe: exploration trials, a share of budget (< 1) or a count
    handoff: float = num(0.4, gt=0)
    # tba-tpe: TBA's temperature falls over the whole "budget" or over the "handoff" trials
    anneal: str = text("handoff")
    # grid (vLLM auto_tune)
    grid_max_num_seqs: list[int] = num([32, 64, 128], ge=1)
    grid_max_num_batched_tokens: list[int] = num([512, 1024, 2048, 4096, 8192], ge=1)
    grid_util_start: float = num(0.95, gt=0, le=1)
    grid_util_step: float = num(0.05, gt=0, le=1)
    # scoot: the random forest's probability-of-feasibility threshold and its step per trial
    pof_threshold: float = num(0.5, ge=0, le=1)
    pof_step: float = num(0.1, ge=0, le=1)


@dataclass
class SpecDecodeConfig:
    """Speculative decoding in the simulator (a draft model proposes, the target verifies).

    ``acceptance_rate`` also stands for vLLM's n-gram speculation (``num_speculative_tokens``),
    whose drafts cost no model step: set it to the rate a real server reports for the workload
    (the trial's ``spec_acceptance_rate``).
    """

    enabled: bool = False
    # tokens speculated per step (vllm scheduler: always; slos-serve: up to, per SLO tier)
    max_tokens: int = num(4, ge=1, le=MAX_SPEC_TOKENS)
    acceptance_rate: float = num(0.7, gt=0, le=1)  # chance each speculated token is accepted
    draft_ratio: float = num(0.1, ge=0, le=1)  # a draft step's time / the target's decode step


@dataclass
class BackendConfig:
    """Where a configuration is evaluated: the simulator or a real vLLM server."""

    name: str = text(MISSING)
    # load phase limit; past it the trial is a timeout crash
    timeout_s: float = num(600.0, gt=0, large=604_800)
    early_abort: bool = False  # stop a window once its SLO verdict is certainly infeasible
    # sim
    # lognormal sigma of step-time jitter; None: hardware.step_noise
    noise: float | None = num(None, ge=0, le=2)
    # chance that a trial dies of a transient CUDA error
    cuda_error_rate: float = num(0.0, ge=0, le=1)
    # wall-clock seconds slept per trial, standing for a launch
    startup_sleep_s: float = num(0.0, ge=0, le=86400)
    scheduler: str = text("vllm")  # vllm (FCFS, vLLM's) or slos-serve (deadline plans, admission)
    replicas: int = num(1, ge=1, le=64)  # independent engines behind a router
    router: str = text("round-robin")  # round-robin, least-loaded, slo-aware or dp-balance
    # slos-serve: requests no plan admits are served best effort (off: all admitted)
    soft_admission: bool = True
    spec_decode: SpecDecodeConfig = field(default_factory=SpecDecodeConfig)
    # vllm: the launch command as an argv list; "{python}" and "{model}" are substituted
    command: list[str] = field(default_factory=lambda: ["vllm", "serve", "{model}"])
    python: str = text(
        "python"
    )  # the interpreter "{python}" stands for (a venv's, for the CPU build)
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the server
    extra_args: list[str] = field(default_factory=list)  # appended after the knob flags
    host: str = "127.0.0.1"  # a loopback address unless allow_remote
    allow_remote: bool = False  # let the server listen beyond loopback (requires api_key)
    api_key: str | None = None  # the server's API key, e.g. ${oc.env:VLLM_API_KEY}; redacted
    # no /health 200 by then: a timeout crash, unless...
    startup_timeout_s: float = num(600.0, gt=0, large=604_800)
    # ...the log grew within this long: more time, up to
    startup_stall_s: float = num(120.0, gt=0, large=604_800)
    # this cap; a start still progressing then is ``infra``
    startup_max_s: float = num(3600.0, gt=0, large=604_800)
    stall_timeout_s: float = num(60.0, gt=0, large=604_800)  # a stream silent this long is hung
    # short requests sent together before the measurement window
    warmup_requests: int = num(8, ge=0, le=10000)
    shutdown_grace_s: float = num(10.0, ge=0, le=3600)  # SIGTERM, then SIGKILL after this
    metrics_interval_s: float = num(1.0, gt=0, le=3600)  # /metrics scrape period during load


@dataclass
class IntRangeConfig:
    low: int = num(MISSING, ge=1)
    high: int = num(MISSING, ge=1)
    log: bool = True
    default: int = num(MISSING, ge=1)


@dataclass
class FloatRangeConfig:
    low: float = MISSING
    high: float = MISSING
    log: bool = False
    default: float = MISSING


@dataclass
class BoolChoiceConfig:
    choices: list[bool] = field(default_factory=lambda: [True, False])
    default: bool = False


@dataclass
class StrChoiceConfig:
    choices: list[str] = field(default_factory=lambda: ["fp16"])
    default: str = "fp16"


@dataclass
class SpaceConfig:
    """Ranges of the eight vLLM knobs, in vLLM's own engine-argument names."""

    name: str = text("default")
    quantization: StrChoiceConfig = field(default_factory=StrChoiceConfig)
    max_num_seqs: IntRangeConfig = field(default_factory=IntRangeConfig)
    max_num_batched_tokens: IntRangeConfig = field(default_factory=IntRangeConfig)
    gpu_memory_utilization: FloatRangeConfig = field(default_factory=FloatRangeConfig)
    max_model_len: IntRangeConfig = field(default_factory=IntRangeConfig)
    enforce_eager: BoolChoiceConfig = field(default_factory=BoolChoiceConfig)
    enable_chunked_prefill: BoolChoiceConfig = field(default_factory=BoolChoiceConfig)
    enable_prefix_caching: BoolChoiceConfig = field(default_factory=BoolChoiceConfig)
    # more vLLM engine arguments, searched when given; the first choice is the default
    kv_cache_dtype: list[str] = field(default_factory=list)  # e.g. [auto,fp8]
    # per-request prefill tokens per step (0: no cap), e.g. [0,256,1024]
    long_prefill_token_threshold: list[int] = field(default_factory=list)
    # fcfs, or priority: requests carry their SLO class's rank (tightest median limits
    # first), e.g. [fcfs,priority]
    scheduling_policy: list[str] = field(default_factory=list)
    # GPUs one server shards the model over, e.g. [1,2,4]; and engines it runs, each on
    # tensor_parallel_size GPUs, balanced by vLLM (tensor x data parallel <= the trial's GPUs)
    tensor_parallel_size: list[int] = field(default_factory=list)
    data_parallel_size: list[int] = field(default_factory=list)
    # tokens per KV-cache block, e.g. [16,32,64,128] (vLLM's GPU kernels take multiples of 16)
    block_size: list[int] = field(default_factory=list)
    # tokens vLLM's n-gram speculation proposes per step (0: none), e.g. [0,2,4]
    num_speculative_tokens: list[int] = field(default_factory=list)
    # the simulator's serving choices, searched when given (the sim backend only); the first
    # choice is the default, e.g. space.scheduler=[vllm,slos-serve] space.replicas=[1,2,4]
    scheduler: list[str] = field(default_factory=list)
    replicas: list[int] = field(default_factory=list)
    router: list[str] = field(default_factory=list)
    spec_decode: list[bool] = field(default_factory=list)
    repair: bool = True  # cap and bump knobs to what vLLM accepts and fit them to the KV cache
    # memory guard: max_num_seqs x max_model_len <= this x KV tokens
    kv_overcommit: float = num(8.0, gt=0, le=1_000_000)


@dataclass
class KnobsConfig:
    """Fixed knob values for ``sloguard evaluate``; unset knobs take the space's defaults."""

    quantization: str | None = None
    max_num_seqs: int | None = num(None, ge=1)
    max_num_batched_tokens: int | None = num(None, ge=1)
    gpu_memory_utilization: float | None = num(None, gt=0, le=1)
    max_model_len: int | None = num(None, ge=1)
    enforce_eager: bool | None = None
    enable_chunked_prefill: bool | None = None
    enable_prefix_caching: bool | None = None
    # optional knobs: the space must list them (space.kv_cache_dtype=[...])
    kv_cache_dtype: str | None = None
    long_prefill_token_threshold: int | None = num(None, ge=0)
    scheduling_policy: str | None = None
    tensor_parallel_size: int | None = num(None, ge=1, le=1024)
    data_parallel_size: int | None = num(None, ge=1, le=1024)
    block_size: int | None = num(None, ge=1, le=MAX_BLOCK_SIZE)
    num_speculative_tokens: int | None = num(None, ge=0, le=MAX_SPEC_TOKENS)


@dataclass
class CapacityConfig:
    """Capacity search: the highest request rate with ``slo.attainment_target`` met.

    From the workload's own rate the search doubles or halves until it brackets the capacity,
    then bisects (geometrically) until the bracket is within ``rel_tol`` or ``max_probes`` loads
    have run. Arrivals keep their shape; only their rate is scaled. With ``stop_early`` a load
    stops once it certainly fails and its exact attainment cannot change the search: once a
    rate has passed, or once it has certainly fallen behind its arrivals.

    ``objective=gpus_for_rate`` needs ``target_rps``, the request rate the deployment must serve
    (at most ``max_rps``). Its searches never go above it (one server that passes it needs no
    more GPUs), and bisect over the rates at which one copy fewer would do, instead of to
    ``rel_tol``, so the copies needed are exact.
    """

    min_rps: float = num(0.05, gt=0)
    max_rps: float = num(1000.0, gt=0, large=1_000_000)
    rel_tol: float = num(0.05, ge=0.0001, lt=1)
    max_probes: int = num(10, ge=1, large=100)
    stop_early: bool = True
    target_rps: float | None = num(None, gt=0, large=1_000_000)


@dataclass
class PriorConfig:
    """A cheaper fidelity's study run first (``sim``: the simulator, see :mod:`sloguard.prior`).

    The real study starts with the prior's ``top_k`` best feasible configurations, and its
    optimizer's feasibility model learns from every prior trial.
    """

    name: str = text("none")
    trials: int = num(40, ge=1, large=10000)
    top_k: int = num(3, ge=0, large=1000)


@dataclass
class TrackingConfig:
    """MLflow settings; ``uri`` null means $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db."""

    uri: str | None = None
    experiment: str = text("sloguard")
    log_requests: bool = True


@dataclass
class Config:
    """The root configuration that ``conf/config.yaml`` composes."""

    model: ModelConfig = MISSING
    hardware: HardwareConfig = MISSING
    slo: SloConfig = MISSING
    workload: WorkloadConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    backend: BackendConfig = MISSING
    space: SpaceConfig = MISSING
    prior: PriorConfig = MISSING
    knobs: KnobsConfig = field(default_factory=KnobsConfig)
    # goodput | capacity (req/s at the attainment target) | capacity_per_gpu (that / GPUs) |
    # gpus_for_rate (fewest GPUs, in replicas of one configuration, for capacity.target_rps)
    objective: str = "goodput"
    capacity: CapacityConfig = field(default_factory=CapacityConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = num(42, ge=0, le=4_294_967_295)
    budget: int = num(15, ge=1, large=10000)
    resume: bool = False
    study_name: str | None = None
    study_dir: str = text("studies")
    comparison: str | None = None  # groups the studies of one paired-seed comparison (a tag)
    progress: bool = True
    # the study's Optuna storage URL (sqlite:///..., postgresql://..., redis://..., or a
    # journal file path); null: a journal file in <study_dir>/<study_name>/
    storage: str | None = None
    workers: Any = 1  # worker processes on this machine, or "auto" (GPUs / gpus_per_trial)
    # seconds between heartbeats of a running trial
    heartbeat_interval: int = num(10, ge=1, le=86400)
    # seconds without a heartbeat after which a trial's worker is dead
    grace_period: int = num(60, ge=1, le=604_800)
    # launches of one configuration again after a failure that is not its fault (infra); the
    # study stops when twice that many launches in a row failed so
    infra_retries: int = num(1, ge=0, le=100)
    # lifts the sane upper bounds (budget, num_requests, timeouts, ...) for deliberately big runs
    allow_large: bool = False


def register_configs() -> None:
    """Register the schema so ``conf/config.yaml`` can name it in its defaults list."""
    ConfigStore.instance().store(name="sloguard_schema", node=Config)


@functools.cache
def schema_defaults() -> dict[str, Any]:
    """Every key's schema default as dotted keys (``prior.name`` -> ``"none"``); keys that a
    group option must set are left out."""
    hints = typing.get_type_hints(Config)
    defaults: dict[str, Any] = {}
    for f in dataclasses.fields(Config):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            node = OmegaConf.structured(kind)
            defaults[f.name] = OmegaConf.to_container(node, throw_on_missing=False)
        elif f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
    return {k: v for k, v in flatten(defaults).items() if v != MISSING}


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts into dotted keys (lists are kept as values)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """Resolve a composed config into plain Python containers."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]


def validate(cfg: DictConfig) -> Config:
    """Check every value against its domain and what no type can express; the typed config.

    Raises:
        ConfigError: Naming the first bad value and what is allowed.
    """
    from sloguard.space import SearchSpace
    from sloguard.workload import ARRIVALS

    try:
        typed: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except OmegaConfBaseException as e:  # an interpolation that does not resolve
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{getattr(e, 'full_key', '') or 'config'}: {first}") from None
    check_domains(typed, allow_large=typed.allow_large)
    _check_choice("optimizer.name", cfg.optimizer.name, sorted(OPTIMIZER_NAMES))
    _check_choice("prior.name", cfg.prior.name, PRIORS)
    _check_study(cfg)
    _check_choice("objective", cfg.objective, OBJECTIVES)
    if cfg.objective in CAPACITY_OBJECTIVES:
        _check_capacity(cfg)
    workload = cfg.workload
    _check_choice("workload.arrival", workload.arrival, ARRIVALS)
    if workload.arrival == "closed":
        _check_positive("workload.concurrency", workload.concurrency)
    if workload.arrival == "trace":
        _check_trace(workload)
    for which in ("prompt_len", "output_len"):
        _check_length(f"workload.{which}", workload[which])
    names = [str(c.name) for c in workload.classes]
    for i, cls in enumerate(workload.classes):
        _check_class(f"workload.classes[{i}]", cls)
        if cls.name in names[:i]:
            raise ConfigError(f"workload.classes[{i}].name={cls.name!r} is not unique")
    if cfg.backend.startup_max_s < cfg.backend.startup_timeout_s:
        raise ConfigError(
            f"backend.startup_max_s={cfg.backend.startup_max_s} is invalid; it must be at least "
            f"backend.startup_timeout_s={cfg.backend.startup_timeout_s}"
        )
    _check_optimizer(cfg.optimizer, cfg.budget)
    _check_serving(cfg.backend, cfg.space)
    _check_choice("hardware.platform", cfg.hardware.platform, PLATFORMS)
    for dtype in cfg.hardware.kv_cache_dtypes:
        _check_choice("hardware.kv_cache_dtypes", dtype, KV_CACHE_DTYPES)
    _check_network(cfg.backend)
    space = SearchSpace.from_config(cfg.space)  # raises ConfigError on a bad range
    fixed = {k: v for k, v in to_container(cfg.knobs).items() if v is not None}
    for name, allowed in (
        ("kv_cache_dtype", KV_CACHE_DTYPES),
        ("scheduling_policy", SCHEDULING_POLICIES),
    ):
        if name in fixed:
            _check_choice(f"knobs.{name}", fixed[name], allowed)
    space.check_values(fixed, where="knobs")
    return typed


def _check_serving(backend: DictConfig, space: DictConfig) -> None:
    """Scheduler, router and speculation are the simulator's; a real server keeps its own."""
    from sloguard.space import SERVING_KNOBS

    _check_choice("backend.scheduler", backend.scheduler, SCHEDULERS)
    _check_choice("backend.router", backend.router, ROUTER_NAMES)
    for name, allowed in (
        ("scheduler", SCHEDULERS),
        ("router", ROUTER_NAMES),
        ("kv_cache_dtype", KV_CACHE_DTYPES),
        ("scheduling_policy", SCHEDULING_POLICIES),
    ):
        for choice in space[name]:
            _check_choice(f"space.{name}", choice, allowed)
    for replicas in space.replicas:
        if not 1 <= replicas <= 64:
            raise ConfigError(f"space.replicas has {replicas}; each must be in [1, 64]")
    for name, least, most, note in (
        ("tensor_parallel_size", 1, 1024, ""),
        ("data_parallel_size", 1, 1024, ""),
        ("block_size", 1, MAX_BLOCK_SIZE, ""),
        ("num_speculative_tokens", 0, MAX_SPEC_TOKENS, " (0: no speculation)"),
    ):
        for size in space[name]:
            if not least <= size <= most:
                raise ConfigError(
                    f"space.{name} has {size}; each must be in [{least}, {most}]{note}"
                )
    if space.data_parallel_size and (space.replicas or space.router or backend.replicas != 1):
        raise ConfigError(
            "space.data_parallel_size is vLLM's own engines behind its balancer; it cannot be "
            "combined with the simulator's replicas and router (space.replicas, space.router, "
            "backend.replicas): give one or the other"
        )
    if space.num_speculative_tokens and (space.spec_decode or backend.spec_decode.enabled):
        raise ConfigError(
            "space.num_speculative_tokens is vLLM's own n-gram speculation; it cannot be "
            "combined with the simulator's draft-model speculation (space.spec_decode, "
            "backend.spec_decode.enabled): give one or the other"
        )
    for threshold in space.long_prefill_token_threshold:  # vLLM: Field(ge=0)
        if threshold < 0:
            raise ConfigError(
                f"space.long_prefill_token_threshold has {threshold}; each must be >= 0 "
                "(0: no cap)"
            )
    if backend.name == "sim":
        return
    asked = [
        f"backend.{key}={backend[key]}"
        for key, plain in (("scheduler", "vllm"), ("replicas", 1))
        if backend[key] != plain
    ]
    asked += ["backend.spec_decode.enabled=true"] if backend.spec_decode.enabled else []
    asked += [f"space.{name}=[{_as_typed(space[name])}]" for name in SERVING_KNOBS if space[name]]
    if asked:
        raise ConfigError(
            f"{asked[0]} is the simulator's: a real vLLM server cannot change its scheduler, "
            f"replicas, router or draft-model speculation from here; use backend=sim, or leave it "
            f"at scheduler=vllm, replicas=1, spec_decode.enabled=false and out of the space "
            f"(vLLM's own n-gram speculation is space.num_speculative_tokens)"
        )


def _as_typed(choices: Any) -> str:
    """A list of choices as it is written on the command line: ``vllm,slos-serve``."""
    return ",".join(str(c).lower() if isinstance(c, bool) else str(c) for c in choices)


def _check_network(backend: DictConfig) -> None:
    """A server listens on loopback, unless remote access is asked for and guarded by a key."""
    host = str(backend.host)
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        raise ConfigError(
            f"backend.host={host!r} is not an IP address; give one, e.g. 127.0.0.1"
        ) from None
    if not loopback and not backend.allow_remote:
        raise ConfigError(
            f"backend.host={host!r} is not a loopback address; a server there is reachable from "
            "other machines: set backend.allow_remote=true with backend.api_key, or use 127.0.0.1"
        )
    if not loopback and not backend.api_key:
        raise ConfigError(
            f"backend.allow_remote=true with backend.host={host!r} needs backend.api_key (e.g. "
            "backend.api_key=${oc.env:VLLM_API_KEY}); an open server serves anyone who reaches it"
        )


def _check_optimizer(opt: DictConfig, budget: int) -> None:
    """Choices among the allowed values; the grid's lists not empty; tba-tpe's handoff a share
    of the budget (< 1) or a whole count of trials within it."""
    if opt.get("start") is not None:
        _check_choice("optimizer.start", opt.start, TBA_STARTS)
    _check_choice("optimizer.anneal", opt.anneal, TBA_TPE_ANNEALS)
    if opt.name == "grid":
        for key in ("grid_max_num_seqs", "grid_max_num_batched_tokens"):
            if not opt[key]:
                raise ConfigError(f"optimizer.{key}=[] is invalid; give at least one value")
    handoff = opt.handoff
    if handoff >= 1 and (handoff != int(handoff) or handoff > budget):
        raise ConfigError(
            f"optimizer.handoff={handoff} is invalid; it must be a share of the budget in (0, 1) "
            f"or a whole number of trials <= budget={budget}"
        )


def check_study_name(name: str) -> None:
    """A study name becomes a folder name: letters, digits, '.', '_', '-'.

    Raises:
        ConfigError: Otherwise.
    """
    if not _STUDY_NAME.match(name) or name in (".", ".."):
        raise ConfigError(
            f"study_name={name!r} is invalid; use letters, digits, '.', '_' and '-' "
            "(at most 200, not starting with '.', '_' or '-')"
        )


def _check_study(cfg: DictConfig) -> None:
    """Workers, heartbeats, the study folder and name (the storage URL: ``check_overrides``)."""
    workers = cfg.workers
    if workers != "auto" and not (
        isinstance(workers, int) and not isinstance(workers, bool) and workers >= 1
    ):
        raise ConfigError(f"workers={workers!r} is invalid; it must be an integer >= 1 or 'auto'")
    if cfg.grace_period <= cfg.heartbeat_interval:
        raise ConfigError(
            f"grace_period={cfg.grace_period} is invalid; it must be more than "
            f"heartbeat_interval={cfg.heartbeat_interval}"
        )
    _check_writable("study_dir", str(cfg.study_dir))
    if cfg.study_name is not None:
        check_study_name(str(cfg.study_name))


def _check_writable(key: str, folder: str) -> None:
    """A folder the tool will write: it exists, or its nearest existing parent is writable."""
    path = os.path.abspath(folder)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path) or not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{key}={folder!r} is not writable here ({path!r} is not a writable folder)"
        )


def _check_trace(workload: DictConfig) -> None:
    """A trace workload needs a readable CSV with known columns and enough requests."""
    from sloguard.workload import read_trace

    path = workload.trace_path
    if not path:
        raise ConfigError("workload.trace_path is required for workload.arrival=trace")
    try:
        arrivals, _, _ = read_trace(path, workload.trace_start_s)  # checks the columns too
    except FileNotFoundError:
        raise ConfigError(f"workload.trace_path={path!r} does not exist") from None
    except (ValueError, OSError) as e:
        raise ConfigError(f"workload.trace_path={path!r} {e}") from None
    if len(arrivals) < workload.num_requests:
        raise ConfigError(
            f"workload.num_requests={workload.num_requests} is more than the "
            f"{len(arrivals)} requests of {path!r} from trace_start_s={workload.trace_start_s:g}"
        )


def _check_length(key: str, dist: DictConfig) -> None:
    from sloguard.workload import LENGTH_DISTS

    _check_choice(f"{key}.dist", dist.dist, LENGTH_DISTS)
    if not 1 <= dist.low <= dist.high:
        raise ConfigError(
            f"{key}: low={dist.low}, high={dist.high} is invalid; it needs 1 <= low <= high"
        )


def _check_class(key: str, cls: DictConfig) -> None:
    """One request class: a TTFT limit given one way, positive limits, lengths, rounds."""
    for prefix in ("", "final_"):
        given = [k for k in ("ttft_ms", "ttft_slowdown") if cls[prefix + k] is not None]
        if len(given) > 1 or (not prefix and not given):
            raise ConfigError(
                f"{key} sets {' and '.join(prefix + k for k in given) or 'no TTFT limit'}; "
                f"give exactly one of {prefix}ttft_ms (absolute) or {prefix}ttft_slowdown "
                "(a multiple of the zero-load TTFT)"
            )
    if cls.rounds > 1 and cls.round_prompt_len is None:
        raise ConfigError(
            f"{key}.round_prompt_len is required when rounds={cls.rounds} > 1 (the tokens each "
            "later round adds, e.g. the tool's result)"
        )
    for k in ("prompt_len", "output_len", "answer_len", "round_prompt_len", "final_output_len"):
        if cls[k] is not None:
            _check_length(f"{key}.{k}", cls[k])


def _check_capacity(cfg: DictConfig) -> None:
    """Capacity search needs open-loop arrivals and a sane bracket."""
    if cfg.workload.arrival == "closed":
        raise ConfigError(
            f"objective={cfg.objective} needs open-loop arrivals; workload.arrival='closed' has "
            "no request rate to search (use poisson, gamma or trace)"
        )
    cap = cfg.capacity
    if cfg.objective == "gpus_for_rate" and cap.target_rps is None:
        raise ConfigError(
            "objective=gpus_for_rate needs capacity.target_rps, the request rate to serve "
            "(req/s, > 0), e.g. capacity.target_rps=40"
        )
    if cfg.objective == "gpus_for_rate" and cap.target_rps > cap.max_rps:
        raise ConfigError(
            f"capacity.target_rps={cap.target_rps} is above capacity.max_rps={cap.max_rps}, the "
            "highest rate a search tries; raise capacity.max_rps to at least the target"
        )
    if cap.max_rps < cap.min_rps:
        raise ConfigError(
            f"capacity.max_rps={cap.max_rps} is invalid; it must be >= capacity.min_rps="
            f"{cap.min_rps}"
        )


def _check_choice(key: str, value: Any, choices: list[str] | tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not known; choose one of: {', '.join(choices)}")


def _check_positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key}={value} is invalid; it must be > 0")
