"""How far the simulator is from a real vLLM server: the same configs and loads on both.

Serves a chat-like load (lognormal prompts and outputs, Poisson arrivals at a low and a high
rate) under ten configurations spread over max_num_seqs, the token budget, chunked prefill and
eager vs compiled mode, on the real CPU build of vLLM with the tiny model and on the simulator
calibrated for it (``hardware=cpu``, fitted by ``sloguard calibrate`` on different loads: these
configs are held out). Prints, per config, real and simulated TTFT p50/p99, ITL p50/p99, TPOT p50
and output throughput with the relative error, then the median absolute error per metric.

The real side runs ``--runs`` times (fresh servers each time); "real" is their mean, and the
median difference between two real runs of the same config is printed as the noise floor: a sim
cannot be judged closer to the server than the server is to itself.

One server launch serves both load levels of a knob setting. The real measurements are saved
to ``--real`` and reused by ``--reuse`` (sim side only, seconds).

Usage:
    python benchmarks/sim_fidelity.py            # 2 real runs (~16 min) + sim
    python benchmarks/sim_fidelity.py --reuse    # sim against the saved real measurements
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path
from typing import Any

from sloguard.backends import create_backend
from sloguard.evaluation import slo_from_config
from sloguard.tune import compose_config
from sloguard.workload import build_workload

BASE = ["model=tiny-random", "hardware=cpu", "space=cpu-small", "slo=relaxed"]
WORKLOAD = [
    "workload=chat-poisson",
    "workload.num_requests=120",
    "workload.prompt_len={dist: lognormal, mean: 192, median: 128, low: 16, high: 1024}",
    "workload.output_len={dist: lognormal, mean: 64, median: 48, low: 4, high: 256}",
]
RATES = (4.0, 12.0)  # req/s: about 20% and 60% of what the baseline config sustains
KNOBS: dict[str, dict[str, Any]] = {
    "baseline": {"max_num_seqs": 32, "max_num_batched_tokens": 2048},
    "few-seqs": {"max_num_seqs": 4, "max_num_batched_tokens": 2048},
    "small-budget": {"max_num_seqs": 32, "max_num_batched_tokens": 256},
    "no-chunking": {"max_num_seqs": 32, "enable_chunked_prefill": False},
    "compiled": {"max_num_seqs": 16, "max_num_batched_tokens": 512, "enforce_eager": False},
}
DEFAULTS = {
    "quantization": "fp16",
    "max_num_batched_tokens": 2048,
    "gpu_memory_utilization": 0.15,
    "max_model_len": 2048,
    "enforce_eager": True,
    "enable_chunked_prefill": True,
    "enable_prefix_caching": False,
}
METRICS = {
    "ttft_p50_ms": "TTFT p50",
    "ttft_p99_ms": "TTFT p99",
    "itl_p50_ms": "ITL p50",
    "itl_p99_ms": "ITL p99",
    "tpot_p50_ms": "TPOT p50",
    "output_throughput_tok_s": "tok/s",
}


def measure(backend_name: str) -> dict[str, dict[str, float]]:
    """Every (knob setting, rate) on ``backend_name``: metrics by config label."""
    out: dict[str, dict[str, float]] = {}
    for name, knobs in KNOBS.items():
        cfg = compose_config([*BASE, *WORKLOAD, f"backend={backend_name}"])
        workloads = [
            build_workload(
                compose_config([*BASE, *WORKLOAD, f"workload.request_rate={r}"]).workload
            )
            for r in RATES
        ]
        results = create_backend(cfg).evaluate_many(
            {**DEFAULTS, **knobs}, workloads, slo_from_config(cfg), seed=0
        )
        for rate, result in zip(RATES, results, strict=True):
            if result.crash is not None:
                raise SystemExit(f"{name} at {rate} req/s crashed: {result.crash.evidence}")
            out[f"{name}@{rate:g}"] = {k: float(result.metrics[k]) for k in METRICS}
            print(f"  measured {name}@{rate:g} on {backend_name}", flush=True)
    return out


def report(runs: list[dict[str, dict[str, float]]], sim: dict[str, dict[str, float]]) -> None:
    """Per-config real | sim | error table, the median absolute error per metric, the floor."""
    real = {
        label: {k: statistics.fmean(run[label][k] for run in runs) for k in METRICS}
        for label in runs[0]
    }
    errors: dict[str, list[float]] = {k: [] for k in METRICS}
    print(f"{'config':22s}" + "".join(f"{label:>24s}" for label in METRICS.values()))
    print(f"{'':22s}" + f"{'real    sim    err':>24s}" * len(METRICS))
    for label, measured in real.items():
        cells = []
        for key in METRICS:
            r, s = measured[key], sim[label][key]
            err = (s - r) / r if r else float("nan")
            errors[key].append(abs(err))
            cells.append(f"{r:8.1f}{s:8.1f}{100 * err:+7.0f}%")
        print(f"{label:22s}" + "".join(f"{c:>24s}" for c in cells))
    medians = {k: statistics.median(v) for k, v in errors.items()}
    print(f"{'median |error|':22s}" + "".join(f"{100 * m:23.1f}%" for m in medians.values()))
    if len(runs) > 1:
        floor = {
            k: statistics.median(
                abs(a[label][k] - b[label][k]) / real[label][k]
                for a, b in itertools.combinations(runs, 2)
                for label in real
            )
            for k in METRICS
        }
        print(f"{'real run-to-run':22s}" + "".join(f"{100 * m:23.1f}%" for m in floor.values()))
    within = [METRICS[k] for k, m in medians.items() if m <= 0.15]
    print(f"metrics within the 15% target: {', '.join(within) or 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reuse", action="store_true", help="skip the real server")
    parser.add_argument("--runs", type=int, default=2, help="real runs (fresh servers)")
    parser.add_argument("--real", default="docs/benchmarks/sim_fidelity_real.json")
    args = parser.parse_args()
    path = Path(args.real)
    if args.reuse:
        runs = json.loads(path.read_text())["runs"]
    else:
        runs = [measure("vllm-cpu") for _ in range(args.runs)]
        path.write_text(json.dumps({"runs": runs}, indent=1))
    sim = measure("sim")
    print(f"{len(sim)} configs: 5 knob settings x {len(RATES)} Poisson rates ({RATES} req/s), 120")
    print(f"chat-like requests each; real = vLLM CPU build (mean of {len(runs)} runs on fresh")
    print("servers), sim = hardware=cpu as calibrated by `sloguard calibrate` on other loads")
    report(runs, sim)


if __name__ == "__main__":
    main()
