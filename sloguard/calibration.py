"""Calibration: fit the simulator's step-time coefficients to measurements of a real server.

``sloguard calibrate`` serves a fixed set of probe loads on the configured real backend: short
prompts decoded at rising concurrency (the per-step and per-sequence costs), single long prompts
(the per-token prefill cost), and open-loop Poisson loads at 30% and 70% of the request rate the
widest decode probe sustained (the frontend's delay as streams multiply), in eager mode and,
where the hardware has it, graph mode. One server launch serves all probes of a mode. It then
fits the hardware config's step-time coefficients so the simulator reproduces the measured
medians (least squares on log error), fits the step-time noise to the measured tails, and writes
a hardware config whose header says where its numbers came from. ``--measurements`` refits saved
measurements without a server.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from scipy.optimize import least_squares

from sloguard.config import to_container
from sloguard.exceptions import ConfigError
from sloguard.workload import Workload, arrival_times

# hardware coefficients the fit sets: (name, lower bound, upper bound)
FITTED: tuple[tuple[str, float, float], ...] = (
    ("eager_step_overhead_ms", 0.0, 1e3),
    ("seq_overhead_ms", 0.0, 1e2),
    ("compute_efficiency", 1e-5, 1.0),
    ("attention_efficiency", 1e-2, 1e2),
    ("request_overhead_ms", 0.0, 1e3),
    ("stream_overhead_ms", 0.0, 1e2),  # fitted when load probes ran
    ("graph_step_overhead_ms", 0.0, 1e3),  # graph-mode ones: fitted when graph probes ran
    ("graph_compute_factor", 0.1, 2.0),
    ("graph_seq_overhead_ms", 0.0, 1e2),
)
_GRAPH_ONLY = ("graph_step_overhead_ms", "graph_compute_factor", "graph_seq_overhead_ms")
_LOAD_ONLY = ("stream_overhead_ms",)
LOAD_SHARES: tuple[float, ...] = (0.3, 0.7)
METRICS: tuple[str, ...] = (
    "tpot_p50_ms",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "itl_p50_ms",
    "itl_p99_ms",
    "output_throughput_tok_s",
)


@dataclass(frozen=True)
class Probe:
    """One calibration load of identical requests: a closed loop, or Poisson arrivals.

    Args:
        name: Short label (``decode-c8``, ``prefill-1024``, ``load-30``, with a mode suffix).
        eager: Served by the eager-mode launch (else the graph-mode one).
        prompt_len: Prompt tokens per request.
        output_len: Output tokens per request.
        concurrency: Requests in flight (closed loop; 0 for a load probe).
        num_requests: Requests served.
        load_share: A load probe's rate as a share of the request rate the widest decode probe
            of its mode sustained (0 for a closed-loop probe).
        rate: A load probe's Poisson rate in req/s, once resolved from the measurements.
    """

    name: str
    eager: bool
    prompt_len: int
    output_len: int
    concurrency: int
    num_requests: int
    load_share: float = 0.0
    rate: float = 0.0

    def workload(self) -> Workload:
        if not self.load_share:  # a closed loop: all due at once, capped
            zeros = np.zeros(self.num_requests)
            return Workload.plain(self.prompt_len, self.output_len, zeros, self.concurrency)
        if self.rate <= 0:
            raise ValueError(f"load probe {self.name} has no rate yet (see resolve_load_rates)")
        due = arrival_times("poisson", self.num_requests, self.rate, 1.0, np.random.default_rng(0))
        return Workload.plain(self.prompt_len, self.output_len, due, 0)

    @property
    def kind(self) -> str:
        if self.load_share:
            return "load"
        return "decode" if self.output_len > 2 else "prefill"


def _limits(cfg: DictConfig) -> tuple[int, int]:
    """The largest batch (capped at 256) and context the space allows the model."""
    max_len = min(int(cfg.space.max_model_len.high), int(cfg.model.max_position_embeddings))
    return min(int(cfg.space.max_num_seqs.high), 256), max_len


def design_probes(cfg: DictConfig) -> list[Probe]:
    """The probe set for a config: sized from its space (largest batch and context)."""
    max_seqs, max_len = _limits(cfg)
    modes = [True, False] if cfg.hardware.supports_cudagraphs else [True]
    probes = []
    for eager in modes:
        suffix = "-eager" if eager else "-graph"
        for c in sorted({1, 4, max(max_seqs // 4, 1), max_seqs}):
            probes.append(Probe(f"decode-c{c}{suffix}", eager, 32, 96, c, max(3 * c, 6)))
        for length in sorted({max_len // 8, max_len // 2, max_len * 7 // 8}):
            probes.append(Probe(f"prefill-{length}{suffix}", eager, length, 2, 1, 6))
        for share in LOAD_SHARES:
            n = max(2 * max_seqs, 24)
            probes.append(Probe(f"load-{100 * share:.0f}{suffix}", eager, 32, 96, 0, n, share))
    return probes


def resolve_load_rates(probes: Sequence[Probe], measured: dict[str, dict]) -> list[Probe]:
    """Set each load probe's rate from its mode's widest decode probe's measured throughput.

    Args:
        probes: The probe set.
        measured: Measurements by probe name; the widest decode probes' are needed.

    Raises:
        ValueError: A mode has load probes but no decode probe.
    """
    out = []
    for probe in probes:
        if probe.kind == "load":
            decode = [p for p in probes if p.kind == "decode" and p.eager == probe.eager]
            if not decode:
                raise ValueError(f"load probe {probe.name} needs a decode probe in its mode")
            widest = max(decode, key=lambda p: p.concurrency)
            sustained = measured[widest.name]["output_throughput_tok_s"] / widest.output_len
            probe = dataclasses.replace(probe, rate=probe.load_share * sustained)
        out.append(probe)
    return out


def probe_knobs(cfg: DictConfig, eager: bool) -> dict[str, Any]:
    """Knobs the probes run under: the space's largest batch and context, a whole-prompt budget."""
    space = cfg.space
    max_seqs, max_len = _limits(cfg)
    return {
        "quantization": space.quantization.default,
        "max_num_seqs": max_seqs,
        "max_num_batched_tokens": max(max_len, int(space.max_num_batched_tokens.low)),
        "gpu_memory_utilization": float(space.gpu_memory_utilization.high),
        "max_model_len": max_len,
        "enforce_eager": eager,
        "enable_chunked_prefill": True,
        "enable_prefix_caching": False,
    }


def _stalled(metrics: dict[str, float]) -> bool:
    """Whether the frontend fell behind in a run: most tokens reached the client merged into
    chunks (median ITL 0), as on a loaded CPU host, where such a run's TTFTs are many times
    the undisturbed ones."""
    return metrics.get("itl_p50_ms", math.nan) == 0


def measure(
    cfg: DictConfig, probes: Sequence[Probe], log_dir: Path | None = None
) -> tuple[list[Probe], list[dict]]:
    """Serve every probe on the configured real backend; one launch per mode.

    Each probe's load runs twice and the second is kept: the first use of a batch shape costs
    extra on a fresh server (kernel selection, caches), which is not the steady state. A kept
    run in which the frontend stalled (:func:`_stalled`) is run once more and the third kept.
    Load probes run last, at rates set from what the closed-loop ones measured.

    Returns:
        The probes with load rates resolved, and their measurements in the same order.

    Raises:
        RuntimeError: A probe crashed (the message names it and the crash's evidence).
    """
    from sloguard.backends import create_backend
    from sloguard.evaluation import slo_from_config

    backend = create_backend(cfg)
    slo = slo_from_config(cfg)
    measured: dict[str, dict] = {}
    resolved = {p.name: p for p in probes}
    for eager in sorted({p.eager for p in probes}, reverse=True):
        group = sorted((p for p in probes if p.eager == eager), key=lambda p: p.kind == "load")
        log = log_dir / f"calibrate-{'eager' if eager else 'graph'}.log" if log_dir else None

        order: list[int] = []  # each run's probe, by its index in the group

        def next_workload(
            results: list, group: list[Probe] = group, order: list[int] = order
        ) -> Workload | None:
            index = 0
            if results:
                if results[-1].crash is not None:
                    return None
                last, metrics = order[-1], results[-1].metrics
                runs = order.count(last)
                index = last if runs < 2 else last + 1
                if runs == 2 and _stalled(metrics):
                    index = last  # a third run replaces the kept one
                elif runs >= 2:
                    measured[group[last].name] = {k: metrics[k] for k in METRICS}
            if index == len(group):
                return None
            order.append(index)
            probe = group[index]
            if probe.kind == "load" and not resolved[probe.name].rate:  # this mode's first one
                resolved.update((p.name, p) for p in resolve_load_rates(group, measured))
            return resolved[probe.name].workload()

        results = backend.evaluate_adaptive(
            probe_knobs(cfg, eager), next_workload, slo, seed=0, log_path=log
        )
        if results and results[-1].crash is not None:
            # a server that did not start served nothing: its crash is the first probe's
            probe = group[order[len(results) - 1] if order else 0]
            raise RuntimeError(f"probe {probe.name} crashed: {results[-1].crash.evidence}")
    return [resolved[p.name] for p in probes], [measured[p.name] for p in probes]


def predict(
    cfg: DictConfig, probes: Sequence[Probe], hardware: dict[str, Any], noise: float = 0.0
) -> list[dict[str, float]]:
    """The simulator's metrics for each probe with ``hardware`` coefficients overriding."""
    from sloguard.backends import BackendSettings
    from sloguard.backends.sim import SimBackend
    from sloguard.evaluation import slo_from_config

    sim_cfg = OmegaConf.merge(
        cfg, {"hardware": hardware, "backend": {"name": "sim", "noise": float(noise)}}
    )
    assert isinstance(sim_cfg, DictConfig)
    backend = SimBackend(BackendSettings.of(sim_cfg))
    slo = slo_from_config(cfg)
    out = []
    for probe in probes:
        result = backend.evaluate(probe_knobs(cfg, probe.eager), probe.workload(), slo, seed=0)
        out.append({k: result.metrics.get(k, math.nan) for k in METRICS})
    return out


@dataclass
class Calibration:
    """Fitted coefficients, the fitted noise, and the per-probe log errors left."""

    hardware: dict[str, float]
    noise: float
    residuals: dict[str, dict[str, float]]

    @property
    def median_error(self) -> float:
        errors = [abs(math.expm1(v)) for r in self.residuals.values() for v in r.values()]
        return float(np.median(errors)) if errors else math.nan


# what each probe kind pins down, with the weight of its log error in the fit: decode probes
# the per-step and per-sequence costs (TPOT, throughput), prefill probes the per-token cost
# (TTFT); tails, noisier, count a quarter and set the step-time noise
_TARGETS: dict[str, dict[str, float]] = {
    "decode": {
        "tpot_p50_ms": 1.0,  # not ITL p50: a busy API server merges tokens into one chunk
        "ttft_p50_ms": 1.0,
        "output_throughput_tok_s": 1.0,
        "itl_p99_ms": 0.25,
    },
    "prefill": {"ttft_p50_ms": 1.0, "ttft_p99_ms": 0.25},
    # open-loop load: TTFT as streams multiply (the frontend's delay). Not its TPOT (the decode
    # probes pin the step costs) nor its TTFT p99: on the CPU build a few requests per load wait
    # 0.5-1.3 s (p50 25-50 ms), stalls no step-time term explains; fitting them bends the rest
    "load": {"ttft_p50_ms": 1.0},
}


def log_errors(
    probes: Sequence[Probe], measured: Sequence[dict], predicted: Sequence[dict]
) -> dict[str, dict[str, float]]:
    """log(sim / real) of each probe's target metrics."""
    errors: dict[str, dict[str, float]] = {}
    for probe, real, sim in zip(probes, measured, predicted, strict=True):
        errors[probe.name] = {
            k: math.log(max(sim[k], 1e-9) / real[k])
            for k in _TARGETS[probe.kind]
            if real.get(k, 0) > 0 and not math.isnan(sim[k])
        }
    return errors


# the fit's starts: the preset's coefficients, and as if the machine were this many times faster
_SPEEDUPS: tuple[float, ...] = (1.0, 4.0, 0.25)


def _as_if_faster(
    names: Sequence[str], x0: np.ndarray, speedup: float, lower: np.ndarray, upper: np.ndarray
) -> np.ndarray:
    """``x0`` with its times divided and its efficiencies multiplied by ``speedup``, in bounds."""
    # times (``_ms``) shrink, efficiencies grow; graph mode's factor on eager compute and the
    # step noise stay as they were
    scale = [
        1 / speedup if n.endswith("_ms") else speedup if n.endswith("_efficiency") else 1.0
        for n in names
    ]
    start = x0 * np.array([*scale, 1.0])
    # strictly inside the bounds: least_squares refuses a start on one
    return np.clip(start, lower + 1e-6 * (upper - lower), upper - 1e-6 * (upper - lower))


def fit(cfg: DictConfig, probes: Sequence[Probe], measured: Sequence[dict]) -> Calibration:
    """Fit step-time coefficients and the step-time noise to the measurements (log least squares).

    Graph-mode coefficients are fitted only when graph-mode probes were measured, the
    frontend's per-stream delay only when load probes were. The fit starts from the preset and
    as if the machine were 4x faster and 4x slower, and keeps the lowest cost.
    """
    graphs = any(not p.eager for p in probes)
    loads = any(p.kind == "load" for p in probes)
    names = [
        name
        for name, _, _ in FITTED
        if (graphs or name not in _GRAPH_ONLY) and (loads or name not in _LOAD_ONLY)
    ]
    bounds = {name: (lo, hi) for name, lo, hi in FITTED}
    base = to_container(cfg.hardware)
    # a coefficient at its lower bound starts at 1% of its range, so the fit can move it (one
    # above its upper bound is clipped by _as_if_faster); the step noise starts at 0.1
    x0 = np.array(
        [
            float(base[n] or 0.0)
            if float(base[n] or 0.0) > bounds[n][0]
            else bounds[n][0] + 0.01 * (bounds[n][1] - bounds[n][0])
            for n in names
        ]
        + [0.1]
    )
    lower = np.array([bounds[n][0] for n in names] + [0.0])
    upper = np.array([bounds[n][1] for n in names] + [0.8])

    def split(x: np.ndarray) -> tuple[dict[str, float], float]:
        return dict(zip(names, (float(v) for v in x[:-1]), strict=True)), float(x[-1])

    def residuals(x: np.ndarray) -> np.ndarray:
        hardware, noise = split(x)
        errors = log_errors(probes, measured, predict(cfg, probes, hardware, noise))
        return np.array(
            [math.sqrt(_TARGETS[p.kind][k]) * v for p in probes for k, v in errors[p.name].items()]
        )

    # the simulator's metrics are not smooth in the coefficients and a preset fitted on another
    # machine can start the fit far off: it also starts as if the machine were faster or slower
    # than the preset's, and keeps the lowest cost
    solutions = [
        least_squares(
            residuals,
            start,
            bounds=(lower, upper),
            x_scale=np.maximum(np.abs(start), 1e-3),
            diff_step=1e-3,
        )
        for start in (_as_if_faster(names, x0, k, lower, upper) for k in _SPEEDUPS)
    ]
    hardware, noise = split(min(solutions, key=lambda s: s.cost).x)
    report = log_errors(probes, measured, predict(cfg, probes, hardware, noise))
    return Calibration(hardware, noise, report)


def hardware_yaml(cfg: DictConfig, calibration: Calibration, source: str) -> str:
    """The calibrated hardware config as YAML, with a header stating its source."""
    values = {**to_container(cfg.hardware), **calibration.hardware}
    values["step_noise"] = calibration.noise
    rounded = {k: _round(v) for k, v in values.items()}
    text = (
        f"{cfg.hardware.name}: step-time coefficients calibrated by `sloguard calibrate` on "
        f"{datetime.date.today().isoformat()} against {cfg.backend.name} serving "
        f"{cfg.model.name} ({source}); median relative error of the probes' medians and tails "
        f"{100 * calibration.median_error:.1f}%. Fitted: "
        f"{', '.join([*calibration.hardware, 'step_noise'])}; the rest as in the base config."
    )
    header = "".join(f"# {line}\n" for line in textwrap.wrap(text, 97))
    return header + OmegaConf.to_yaml(OmegaConf.create(rounded))


def _round(value: Any) -> Any:
    return float(f"{value:.4g}") if isinstance(value, float) else value


def _setting(cfg: DictConfig) -> dict[str, str]:
    """The model and hardware that measurements are taken with (and refitted for)."""
    return {"model": str(cfg.model.name), "hardware": str(cfg.hardware.name)}


def _read_measurements(path: Path, cfg: DictConfig) -> tuple[list[Probe], list[dict]]:
    """Saved probes and measurements, refused when taken with another model or hardware.

    Raises:
        ConfigError: The file is not a saved calibration, or its setting differs from ``cfg``'s.
    """
    try:
        data = json.loads(path.read_text())
        probes = [Probe(**p) for p in data["probes"]]
        measured = [dict(m) for m in data["measured"]]
        setting = dict(data.get("setting", _setting(cfg)))  # files saved before it was recorded
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(
            f"--measurements {path} is not a saved calibration (JSON with probes and measured): "
            f"{type(e).__name__}: {e}"
        ) from None
    if len(probes) != len(measured):
        raise ConfigError(
            f"--measurements {path} has {len(probes)} probes but {len(measured)} measurements"
        )
    if setting != _setting(cfg):
        taken = " ".join(f"{k}={v}" for k, v in setting.items())
        given = " ".join(f"{k}={v}" for k, v in _setting(cfg).items())
        raise ConfigError(
            f"--measurements {path} were taken with {taken}, not {given}: pass the same overrides"
        )
    return probes, measured


def main(argv: Sequence[str] | None = None) -> None:
    """``sloguard calibrate [overrides] --out FILE [--measurements FILE]``."""
    from sloguard.backends import BackendSettings, backend_class
    from sloguard.tune import compose_config

    parser = argparse.ArgumentParser(
        prog="sloguard calibrate",
        description="Measure probe loads on a real vLLM server and fit the simulator's "
        "step-time coefficients for its hardware.",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (backend=vllm-cpu ...)")
    parser.add_argument("--out", required=True, help="hardware YAML to write")
    parser.add_argument(
        "--measurements",
        help="JSON of probes and measurements: read it if it exists (no server; refused if taken "
        "with another model or hardware), else save to it",
    )
    args = parser.parse_args(argv)
    try:
        cfg = compose_config(args.overrides)
        saved = Path(args.measurements) if args.measurements else None
        if saved is not None and saved.exists():
            probes, measured = _read_measurements(saved, cfg)
        else:
            if cfg.backend.name == "sim":
                raise ConfigError(
                    "backend=sim cannot be calibrated against itself; choose backend=vllm or "
                    "backend=vllm-cpu (or pass --measurements FILE of saved ones)"
                )
            backend_class(cfg.backend.name).preflight(BackendSettings.of(cfg))
            probes, measured = measure(cfg, design_probes(cfg))
            if saved is not None:
                saved.parent.mkdir(parents=True, exist_ok=True)
                payload = {
                    "setting": _setting(cfg),
                    "probes": [asdict(p) for p in probes],
                    "measured": measured,
                }
                saved.write_text(json.dumps(payload, indent=1))
    except (ConfigError, RuntimeError) as e:
        print(f"sloguard: error: {e}", file=sys.stderr)
        sys.exit(2)
    calibration = fit(cfg, probes, measured)
    source = f"{len(probes)} probes" + (f" in {args.measurements}" if args.measurements else "")
    Path(args.out).write_text(hardware_yaml(cfg, calibration, source))
    for name, errors in calibration.residuals.items():
        shown = "  ".join(f"{k} {100 * math.expm1(v):+6.1f}%" for k, v in errors.items())
        print(f"{name:22s} {shown}")
    fitted = ", ".join(f"{k}={_round(v)}" for k, v in calibration.hardware.items())
    print(
        f"wrote {args.out}: {fitted}, step_noise={calibration.noise:.3g}; "
        f"median error {100 * calibration.median_error:.1f}%"
    )
