"""SLOs-Serve's capacity claims on the simulator, printed beside the paper's (arXiv 2504.08784).

For the six scenarios (chatbot, coding, summarization, mixed, tool-calling, reasoning) on one
model and hardware (llama-3.1-8b on a100-40gb by default: TPOT limits of 50-100 ms leave a decode
batch room for only a few hundred prefill tokens per step, as OPT-13B on an A100 did in the
paper), each figure is a capacity (``objective=capacity``: the highest request rate with >= 90% of
requests meeting their class's SLOs), per replica:

- **gain**: ``slos-serve`` (DP admission, soft admission, speculation) over ``vllm`` scheduling,
  same knobs, one replica; the geometric mean over the scenarios (paper: 2.2x);
- **ablations**, each the geometric mean of full / ablated: without speculation (paper 1.66x),
  without routing (2 replicas, round-robin instead of slo-aware; paper 1.19x), without burst
  handling (no soft admission, under bursty arrivals; paper 1.34x);
- **replicas** 1, 2, 4 for tool-calling under bursty arrivals: total capacity over one replica's
  (paper: super-linear, up to 6.2x).

Also prints the planner's time per invocation (paper: under 10 ms) and one 1000-request
slos-serve trial's wall time (target: 0.5 s on one core).

Usage:
    python benchmarks/slos_serve.py                     # ~4 min on 2 cores
    python benchmarks/slos_serve.py --model qwen2-1.5b  # another model (any conf/model)
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

from sloguard.cli import evaluate

SCENARIOS = ("chatbot", "coding", "summarization", "mixed", "tool-calling", "reasoning")
BURSTY = ["workload.arrival=gamma", "workload.burstiness=0.5"]  # inter-arrival CV 1.4
PER_REPLICA = 500  # requests per replica: a finite load's attainment depends on its length
FULL = ["backend.scheduler=slos-serve", "backend.spec_decode.enabled=true"]
PAPER = {"gain": 2.2, "speculation": 1.66, "routing": 1.19, "burst handling": 1.34}


def capacity(base: list[str], extra: list[str]) -> tuple[float, dict[str, Any]]:
    """Capacity per replica (req/s) of one configuration, and its result's server figures."""
    replicas = next((int(e.split("=")[1]) for e in extra if e.startswith("backend.replicas=")), 1)
    size = f"workload.num_requests={PER_REPLICA * replicas}"
    result = evaluate([*base, "objective=capacity", size, *extra])
    return float(result["metrics"].get("capacity_rps", 0.0)) / replicas, result["server"]


def geo_mean(values: list[float]) -> str:
    """Geometric mean of the finite ratios, and how many were infinite (nothing to divide)."""
    finite = [v for v in values if 0 < v < math.inf]
    mean = math.exp(sum(math.log(v) for v in finite) / len(finite)) if finite else 0.0
    infinite = len(values) - len(finite)
    return f"{mean:9.2f}x" + (f" ({infinite} scenario(s) with 0 req/s ablated left out)"
                              if infinite else "")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--hardware", default="a100-40gb")
    args = parser.parse_args()
    # a long load-phase limit: the capacity search tries no rate whose arrivals outlast half of it
    base = [f"model={args.model}", f"hardware={args.hardware}", "backend.timeout_s=7200"]
    start = time.perf_counter()
    print(f"capacity per replica (req/s, >=90% attainment), {args.model} on {args.hardware}")
    print(f"{'scenario':14s}{'vllm':>8s}{'slos-serve':>12s}{'gain':>7s}{'no spec':>9s}"
          f"{'rr x2':>8s}{'slo x2':>8s}{'no burst':>10s}{'burst':>8s}{'plan ms':>9s}")  # fmt: skip
    ratios: dict[str, list[float]] = {key: [] for key in PAPER}
    planner_max = 0.0
    for name in SCENARIOS:
        load = [*base, f"workload={name}"]
        vllm, _ = capacity(load, ["backend.scheduler=vllm"])
        full, server = capacity(load, FULL)
        no_spec, _ = capacity(load, ["backend.scheduler=slos-serve"])
        two = [*FULL, "backend.replicas=2"]
        rr, _ = capacity(load, [*two, "backend.router=round-robin"])
        slo, _ = capacity(load, [*two, "backend.router=slo-aware"])
        no_burst, _ = capacity([*load, *BURSTY], [*FULL, "backend.soft_admission=false"])
        burst, _ = capacity([*load, *BURSTY], FULL)
        planner_max = max(planner_max, float(server.get("planner_ms_max", 0.0)))
        for key, (num, den) in {
            "gain": (full, vllm),
            "speculation": (full, no_spec),
            "routing": (slo, rr),
            "burst handling": (burst, no_burst),
        }.items():
            ratios[key].append(num / den if den else math.inf)  # fmt: skip
        print(f"{name:14s}{vllm:8.2f}{full:12.2f}{full / vllm if vllm else 0:6.2f}x{no_spec:9.2f}"
              f"{rr:8.2f}{slo:8.2f}{no_burst:10.2f}{burst:8.2f}"
              f"{server.get('planner_ms_mean', 0):9.3f}")  # fmt: skip
    print(f"\n{'geometric mean':28s}{'paper':>8s}{'simulator':>10s}")
    for key, paper in PAPER.items():
        label = "slos-serve / vllm" if key == "gain" else f"with / without {key}"
        print(f"{label:28s}{paper:7.2f}x{geo_mean(ratios[key])}")
    print("\ntool-calling, bursty arrivals: total capacity (req/s) by replicas, / one replica's")
    print(f"{'replicas':>8s}{'vllm rr':>10s}{'x':>8s}{'slos-serve':>12s}{'x':>8s}")
    single: dict[str, float] = {}
    for replicas in (1, 2, 4):
        row = f"{replicas:8d}"
        for label, extra in (("vllm", ["backend.scheduler=vllm", "backend.router=round-robin"]),
                             ("slos", [*FULL, "backend.router=slo-aware"])):  # fmt: skip
            load = [*base, "workload=tool-calling", *BURSTY]
            per, _ = capacity(load, [*extra, f"backend.replicas={replicas}"])
            total = per * replicas
            single.setdefault(label, total)
            scale = f"{total / single[label]:7.2f}x" if single[label] else "      - "
            row += f"{total:10.2f}{scale}" if label == "vllm" else f"{total:12.2f}{scale}"
        print(row)
    print("paper: super-linear, up to 6.2x (tool-calling under bursts)")
    trial = evaluate([*base, "workload=mixed", "workload.num_requests=1000", *FULL])
    print(f"\nplanner per invocation: max {planner_max:.2f} ms in any scenario (paper: < 10 ms)")
    print(f"one 1000-request slos-serve trial (mixed): {trial['server']['sim_wall_s']:.3f} s "
          f"(target 0.5 s)")  # fmt: skip
    print(f"benchmark wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
