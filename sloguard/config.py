"""Typed configuration schema for Hydra and its semantic validation.

The dataclasses below are registered in Hydra's ConfigStore as the schema of ``conf/config.yaml``,
so a misspelled key or a wrongly typed value fails when the configuration is composed. Checks that
a type cannot express (a negative budget, an SLO of zero, a range with ``low > high``) live in
:func:`validate`, which raises :class:`ConfigError` with one line naming the bad value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
    """A configuration value is invalid; the message is one line naming it and what is allowed."""


OBJECTIVES: tuple[str, ...] = ("goodput", "capacity")


@dataclass
class ModelConfig:
    """Architecture numbers that decide memory and speed (from the model's config.json)."""

    name: str = MISSING
    path: str = ""  # Hugging Face id or local directory the vllm backend serves
    num_params_b: float = MISSING  # parameters, billions
    num_layers: int = MISSING
    hidden_size: int = MISSING
    intermediate_size: int = MISSING
    num_attention_heads: int = MISSING
    num_kv_heads: int = MISSING
    head_dim: int = MISSING
    vocab_size: int = MISSING
    max_position_embeddings: int = MISSING
    dtype_bytes: int = 2


@dataclass
class HardwareConfig:
    """One accelerator: memory, roofline peaks and per-step overheads."""

    name: str = MISSING
    vram_gb: float = MISSING  # GiB the engine can see (host memory for the CPU build)
    peak_tflops: float = MISSING  # dense fp16 tensor throughput
    mem_bw_gbps: float = MISSING  # GB/s
    compute_efficiency: float = 0.7
    bandwidth_efficiency: float = 0.85
    graph_step_overhead_ms: float = 0.8  # per step with CUDA graphs
    eager_step_overhead_ms: float = 1.5  # per step in eager mode, plus the per-layer cost
    eager_layer_overhead_ms: float = 0.08
    cudagraph_max_tokens: int = 512  # largest captured batch (vLLM's max capture size)
    non_torch_memory_gb: float = 0.6  # CUDA context, NCCL, allocator slack
    used_by_others_gb: float = 0.0  # memory other processes hold on the device
    fragmentation_frac: float = 0.03  # allocator growth under load, share of VRAM
    load_gbps: float = 2.0  # weight loading speed at startup, GB/s
    attention_efficiency: float = 1.0  # attention FLOP rate relative to the GEMMs
    graph_compute_factor: float = 1.0  # compute time in graph mode relative to eager
    graphs_dynamic: bool = False  # graphs serve every batch size (CPU torch.compile), not <= 512
    seq_overhead_ms: float = 0.0  # per sampled sequence per step (sampling, output processing)
    graph_seq_overhead_ms: float | None = None  # the same in graph mode; None: seq_overhead_ms
    request_overhead_ms: float = 0.0  # frontend: from a request's send until the engine has it
    stream_overhead_ms: float = 0.0  # frontend: more of that delay per sequence then running
    step_noise: float = 0.03  # lognormal sigma of per-step time jitter (measured by calibration)
    supports_cudagraphs: bool = True
    quantization: list[str] = field(default_factory=lambda: ["fp16", "fp8", "awq", "gptq"])
    gpus_per_trial: int = 1  # GPUs each trial's server gets (workers=auto: GPUs / this)


@dataclass
class SloConfig:
    """Latency SLOs: a trial is feasible when both percentiles are within their thresholds."""

    name: str = "default"
    ttft_ms: float = 500.0
    itl_ms: float = 100.0
    percentile: float = 99.0
    e2el_ms: float | None = None  # optional end-to-end limit per request
    # multi-SLO workloads (workload.classes) and capacity: the share of requests that must meet
    # their own SLOs for a trial to be feasible
    attainment_target: float = 0.9


@dataclass
class LengthConfig:
    """A token-length distribution: fixed, uniform or lognormal (from mean and median)."""

    dist: str = "fixed"
    mean: float = 128.0
    median: float | None = None  # lognormal only; defaults to mean / 1.25
    low: int = 1
    high: int = 4096


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

    name: str = MISSING
    weight: float = 1.0  # share of requests (normalised over the classes)
    prompt_len: LengthConfig | None = None  # null: the workload's
    output_len: LengthConfig | None = None  # null: the workload's
    ttft_ms: float | None = None  # absolute TTFT limit ...
    ttft_slowdown: float | None = None  # ... or a multiple of the zero-load TTFT
    tpot_ms: float = 100.0
    answer_len: LengthConfig | None = None  # reasoning: answer tokens after the thinking ones
    answer_tpot_ms: float | None = None  # null: tpot_ms
    rounds: int = 1  # tool calling: prefill/decode rounds per request
    round_prompt_len: LengthConfig | None = None  # tokens each later round adds (tool output)
    tool_latency_s: float = 0.0
    final_output_len: LengthConfig | None = None  # null: output_len
    final_ttft_ms: float | None = None  # the last round's SLOs; null: the class's
    final_ttft_slowdown: float | None = None
    final_tpot_ms: float | None = None


@dataclass
class WorkloadConfig:
    """Requests a trial serves: lengths, arrivals, count; seeded so every trial sees the same."""

    name: str = MISSING
    num_requests: int = 200
    prompt_len: LengthConfig = field(default_factory=LengthConfig)
    output_len: LengthConfig = field(default_factory=LengthConfig)
    arrival: str = "closed"  # closed | poisson | gamma | trace
    request_rate: float = 10.0  # req/s for poisson and gamma
    burstiness: float = 1.0  # gamma shape; 1.0 is Poisson
    concurrency: int = 0  # in-flight cap; required for closed, optional for open loops
    ramp_up_s: float = 0.0  # closed loop: spread the first `concurrency` requests over this
    shared_prefix_len: int = 0  # tokens of a prefix shared by requests of one group
    num_prefix_groups: int = 0
    seed: int = 0
    # arrival=trace: a CSV of (arrived_at, num_prefill_tokens, num_decode_tokens) or the Azure
    # columns (TIMESTAMP, ContextTokens, GeneratedTokens)
    trace_path: str | None = None
    trace_time_scale: float = 1.0  # multiplies the gaps: 0.5 replays at twice the rate
    trace_start_s: float = 0.0  # skip the trace's first seconds
    # multi-SLO: request classes with their own SLOs (empty: the slo group judges every request)
    classes: list[RequestClassConfig] = field(default_factory=list)


@dataclass
class OptimizerConfig:
    """Which optimizer proposes configurations, and its settings."""

    name: str = MISSING
    n_startup_trials: int = 5  # tpe, constrained-bo: random trials before the model
    # tba and tba-tpe (null: the optimizer's default)
    n_initial: int | None = None
    n_candidates: int | None = None
    t0: float | None = None
    oob_gate: float | None = None
    crash_threshold: float | None = None
    gamma: float | None = None
    min_trials: int | None = None
    crash_rate: float | None = None
    handoff: float = 0.4  # tba-tpe: exploration trials, a share of budget (< 1) or a count
    # grid (vLLM auto_tune)
    grid_max_num_seqs: list[int] = field(default_factory=lambda: [32, 64, 128])
    grid_max_num_batched_tokens: list[int] = field(
        default_factory=lambda: [512, 1024, 2048, 4096, 8192]
    )
    grid_util_start: float = 0.95
    grid_util_step: float = 0.05


@dataclass
class BackendConfig:
    """Where a configuration is evaluated: the simulator or a real vLLM server."""

    name: str = MISSING
    timeout_s: float = 600.0  # load phase limit; past it the trial is a timeout crash
    early_abort: bool = False  # stop a window once its SLO verdict is certainly infeasible
    # sim
    noise: float | None = None  # lognormal sigma of step-time jitter; None: hardware.step_noise
    cuda_error_rate: float = 0.0  # chance that a trial dies of a transient CUDA error
    startup_sleep_s: float = 0.0  # wall-clock seconds slept per trial, standing for a launch
    # vllm: the launch command as an argv list; "{python}" and "{model}" are substituted
    command: list[str] = field(default_factory=lambda: ["vllm", "serve", "{model}"])
    python: str = "python"  # the interpreter "{python}" stands for (a venv's, for the CPU build)
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the server
    extra_args: list[str] = field(default_factory=list)  # appended after the knob flags
    host: str = "127.0.0.1"
    startup_timeout_s: float = 600.0  # no /health 200 by then: a timeout crash, unless...
    startup_stall_s: float = 120.0  # ...the log grew within this long: more time, up to
    startup_max_s: float = 3600.0  # this cap; a start still progressing then is ``infra``
    stall_timeout_s: float = 60.0  # a stream silent this long is hung
    warmup_requests: int = 8  # short requests sent together before the measurement window
    shutdown_grace_s: float = 10.0  # SIGTERM, then SIGKILL after this
    metrics_interval_s: float = 1.0  # /metrics scrape period during load


@dataclass
class IntRangeConfig:
    low: int = MISSING
    high: int = MISSING
    log: bool = True
    default: int = MISSING


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

    name: str = "default"
    quantization: StrChoiceConfig = field(default_factory=StrChoiceConfig)
    max_num_seqs: IntRangeConfig = field(default_factory=IntRangeConfig)
    max_num_batched_tokens: IntRangeConfig = field(default_factory=IntRangeConfig)
    gpu_memory_utilization: FloatRangeConfig = field(default_factory=FloatRangeConfig)
    max_model_len: IntRangeConfig = field(default_factory=IntRangeConfig)
    enforce_eager: BoolChoiceConfig = field(default_factory=BoolChoiceConfig)
    enable_chunked_prefill: BoolChoiceConfig = field(default_factory=BoolChoiceConfig)
    enable_prefix_caching: BoolChoiceConfig = field(default_factory=BoolChoiceConfig)
    repair: bool = True  # cap and bump knobs to what vLLM accepts and fit them to the KV cache
    kv_overcommit: float = 8.0  # memory guard: max_num_seqs x max_model_len <= this x KV tokens


@dataclass
class KnobsConfig:
    """Fixed knob values for ``sloguard evaluate``; unset knobs take the space's defaults."""

    quantization: str | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    enforce_eager: bool | None = None
    enable_chunked_prefill: bool | None = None
    enable_prefix_caching: bool | None = None


@dataclass
class CapacityConfig:
    """Capacity search: the highest request rate with ``slo.attainment_target`` met.

    From the workload's own rate the search doubles or halves until it brackets the capacity,
    then bisects (geometrically) until the bracket is within ``rel_tol`` or ``max_probes`` loads
    have run. Arrivals keep their shape; only their rate is scaled.
    """

    min_rps: float = 0.05
    max_rps: float = 1000.0
    rel_tol: float = 0.05
    max_probes: int = 10


@dataclass
class TrackingConfig:
    """MLflow settings; ``uri`` null means $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db."""

    uri: str | None = None
    experiment: str = "sloguard"
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
    knobs: KnobsConfig = field(default_factory=KnobsConfig)
    objective: str = "goodput"  # goodput | capacity (req/s at the attainment target)
    capacity: CapacityConfig = field(default_factory=CapacityConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = 42
    budget: int = 15
    resume: bool = False
    study_name: str | None = None
    study_dir: str = "studies"
    comparison: str | None = None  # groups the studies of one paired-seed comparison (a tag)
    progress: bool = True
    # the study's Optuna storage URL (sqlite:///..., postgresql://..., redis://..., or a
    # journal file path); null: a journal file in <study_dir>/<study_name>/
    storage: str | None = None
    workers: Any = 1  # worker processes on this machine, or "auto" (GPUs / gpus_per_trial)
    heartbeat_interval: int = 10  # seconds between heartbeats of a running trial
    grace_period: int = 60  # seconds without a heartbeat after which a trial's worker is dead
    # launches of one configuration again after a failure that is not its fault (infra); the
    # study stops when twice that many launches in a row failed so
    infra_retries: int = 1


def register_configs() -> None:
    """Register the schema so ``conf/config.yaml`` can name it in its defaults list."""
    ConfigStore.instance().store(name="sloguard_schema", node=Config)


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """Resolve a composed config into plain Python containers."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]


def validate(cfg: DictConfig) -> None:
    """Check what the schema's types cannot; raise ConfigError naming the first bad value."""
    from sloguard.backends import BACKENDS
    from sloguard.optimizer import OPTIMIZERS
    from sloguard.space import SearchSpace
    from sloguard.workload import ARRIVALS

    _check_choice("optimizer.name", cfg.optimizer.name, sorted(OPTIMIZERS))
    _check_choice("backend.name", cfg.backend.name, sorted(BACKENDS))
    if cfg.budget < 1:
        raise ConfigError(f"budget={cfg.budget} is invalid; it must be an integer >= 1")
    for key in ("ttft_ms", "itl_ms"):
        _check_positive(f"slo.{key}", cfg.slo[key])
    if cfg.slo.e2el_ms is not None:
        _check_positive("slo.e2el_ms", cfg.slo.e2el_ms)
    if not 0.0 < cfg.slo.percentile <= 100.0:
        raise ConfigError(
            f"slo.percentile={cfg.slo.percentile} is invalid; it must be in (0, 100]"
        )
    if not 0.0 < cfg.slo.attainment_target <= 1.0:
        raise ConfigError(
            f"slo.attainment_target={cfg.slo.attainment_target} is invalid; it must be in (0, 1]"
        )
    _check_study(cfg)
    _check_choice("objective", cfg.objective, OBJECTIVES)
    if cfg.objective == "capacity":
        _check_capacity(cfg)
    workload = cfg.workload
    _check_choice("workload.arrival", workload.arrival, ARRIVALS)
    for key in ("num_requests", "request_rate", "burstiness"):
        _check_positive(f"workload.{key}", workload[key])
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
    for key in ("vram_gb", "peak_tflops", "mem_bw_gbps"):
        _check_positive(f"hardware.{key}", cfg.hardware[key])
    if cfg.backend.noise is not None and cfg.backend.noise < 0:
        raise ConfigError(f"backend.noise={cfg.backend.noise} is invalid; it must be >= 0")
    for key in (
        "timeout_s",
        "startup_timeout_s",
        "startup_stall_s",
        "startup_max_s",
        "stall_timeout_s",
        "metrics_interval_s",
    ):
        _check_positive(f"backend.{key}", cfg.backend[key])
    if cfg.backend.startup_max_s < cfg.backend.startup_timeout_s:
        raise ConfigError(
            f"backend.startup_max_s={cfg.backend.startup_max_s} is invalid; it must be at least "
            f"backend.startup_timeout_s={cfg.backend.startup_timeout_s}"
        )
    _check_positive("optimizer.handoff", cfg.optimizer.handoff)
    _check_positive("optimizer.grid_util_step", cfg.optimizer.grid_util_step)
    _check_positive("space.kv_overcommit", cfg.space.kv_overcommit)
    space = SearchSpace.from_config(cfg.space)  # raises ConfigError on a bad range
    fixed = {k: v for k, v in to_container(cfg.knobs).items() if v is not None}
    space.check_values(fixed, where="knobs")


def _check_study(cfg: DictConfig) -> None:
    """Workers, heartbeats, the storage URL's form and the study name."""
    from sloguard.study import StorageSpec, check_study_name

    workers = cfg.workers
    if workers != "auto" and not (
        isinstance(workers, int) and not isinstance(workers, bool) and workers >= 1
    ):
        raise ConfigError(f"workers={workers!r} is invalid; it must be an integer >= 1 or 'auto'")
    if cfg.hardware.gpus_per_trial < 1:
        raise ConfigError(
            f"hardware.gpus_per_trial={cfg.hardware.gpus_per_trial} is invalid; it must be >= 1"
        )
    for key in ("heartbeat_interval", "grace_period"):
        _check_positive(key, cfg[key])
    if not isinstance(cfg.infra_retries, int) or cfg.infra_retries < 0:
        raise ConfigError(
            f"infra_retries={cfg.infra_retries!r} is invalid; it must be an integer >= 0"
        )
    if cfg.grace_period <= cfg.heartbeat_interval:
        raise ConfigError(
            f"grace_period={cfg.grace_period} is invalid; it must be more than "
            f"heartbeat_interval={cfg.heartbeat_interval}"
        )
    if cfg.backend.startup_sleep_s < 0:
        raise ConfigError(
            f"backend.startup_sleep_s={cfg.backend.startup_sleep_s} is invalid; it must be >= 0"
        )
    StorageSpec(cfg.storage)  # the URL's scheme
    if cfg.study_name is not None:
        check_study_name(str(cfg.study_name))


def _check_trace(workload: DictConfig) -> None:
    """A trace workload needs a readable CSV with known columns and enough requests."""
    from sloguard.workload import read_trace

    _check_positive("workload.trace_time_scale", workload.trace_time_scale)
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
    _check_positive(f"{key}.mean", dist.mean)
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
        for k in given:
            _check_positive(f"{key}.{prefix}{k}", cls[prefix + k])
    for k in ("weight", "tpot_ms", "answer_tpot_ms", "final_tpot_ms"):
        if cls[k] is not None:
            _check_positive(f"{key}.{k}", cls[k])
    if cls.tool_latency_s < 0:
        raise ConfigError(f"{key}.tool_latency_s={cls.tool_latency_s} is invalid; it must be >= 0")
    if cls.rounds < 1:
        raise ConfigError(f"{key}.rounds={cls.rounds} is invalid; it must be an integer >= 1")
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
            "objective=capacity needs open-loop arrivals; workload.arrival='closed' has no "
            "request rate to search (use poisson, gamma or trace)"
        )
    cap = cfg.capacity
    for k in ("min_rps", "rel_tol", "max_probes"):
        _check_positive(f"capacity.{k}", cap[k])
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
