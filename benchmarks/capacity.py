"""Capacity of the SLOs-Serve scenarios, and how close the simulator's capacity is to a server's.

Part 1 (simulator): for each multi-SLO scenario on the default model and hardware (qwen2-1.5b
on a100-40gb) and the default knobs, the capacity (highest Poisson rate with >= 90% of requests
meeting their class's SLOs), the probes it took and the wall time of the search.

Part 2 (``--real``): the same search on the real CPU build of vLLM with the tiny model and on
the simulator calibrated for it (``hardware=cpu``), for scaled-down chatbot and tool-calling
loads with one fixed configuration. Real results are saved to ``--out`` and reused by
``--reuse``.

Usage:
    python benchmarks/capacity.py                 # simulator only, ~30 s
    python benchmarks/capacity.py --real          # plus real vs sim on the CPU build (~6 min)
    python benchmarks/capacity.py --reuse         # plus the saved real figures
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from sloguard.cli import evaluate

SCENARIOS = ("chatbot", "coding", "summarization", "mixed", "tool-calling", "reasoning")
CPU = [
    "model=tiny-random",
    "hardware=cpu",
    "space=cpu-small",
    "model.path=models/tiny-random",
    "objective=capacity",
    "capacity.rel_tol=0.1",
    "workload.num_requests=60",
    "workload.request_rate=4",
    "knobs.max_num_seqs=16",
    "knobs.max_num_batched_tokens=2048",
    "knobs.max_model_len=2048",
    "knobs.gpu_memory_utilization=0.15",
    "knobs.enforce_eager=true",
    "knobs.enable_chunked_prefill=true",
    "knobs.enable_prefix_caching=true",
]
# scaled to the tiny model's 2 CPU cores: shorter requests than the GPU scenarios
CPU_LOADS: dict[str, list[str]] = {
    "chatbot": [
        "workload=chatbot",
        "workload.prompt_len={dist:lognormal,mean:192,median:128,low:16,high:1024}",
        "workload.output_len={dist:lognormal,mean:64,median:48,low:4,high:256}",
    ],
    "tool-calling": [
        "workload=tool-calling",
        "workload.prompt_len={dist:lognormal,mean:192,median:128,low:16,high:512}",
        "workload.output_len={dist:lognormal,mean:24,median:16,low:4,high:64}",
        "workload.classes.0.final_output_len={dist:lognormal,mean:64,median:48,low:4,high:256}",
        "workload.classes.0.round_prompt_len={dist:fixed,mean:48,low:1,high:48}",
    ],
}


def search(overrides: list[str]) -> dict[str, Any]:
    """One capacity search: capacity, probes (rate, attainment), wall seconds."""
    start = time.perf_counter()
    out = evaluate(overrides)
    m = out["metrics"]
    probes = [
        (
            round(m[f"capacity/probe_{i}/rate_rps"], 2),
            round(m[f"capacity/probe_{i}/attainment"], 3),
        )
        for i in range(int(m["capacity_probes"]))
    ]
    if out["crash"]:
        raise SystemExit(f"{overrides}: crashed: {out['crash']['evidence']}")
    return {
        "capacity_rps": m["capacity_rps"],
        "probes": probes,
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="also measure the CPU build")
    parser.add_argument("--reuse", action="store_true", help="reuse saved real figures")
    parser.add_argument("--out", default="docs/benchmarks/capacity_real.json")
    args = parser.parse_args()

    print("Simulator, qwen2-1.5b on a100-40gb, default knobs, attainment target 0.9")
    head = f"{'scenario':15s}{'capacity req/s':>16s}{'probes':>8s}{'seconds':>9s}"
    print(f"{head}  probes (rate, attainment)")
    for name in SCENARIOS:
        r = search([f"workload={name}", "objective=capacity"])
        row = f"{name:15s}{r['capacity_rps']:16.2f}{len(r['probes']):8d}{r['seconds']:9.2f}"
        print(f"{row}  {r['probes']}")

    if not (args.real or args.reuse):
        return
    path = Path(args.out)
    if args.real:
        real = {n: search([*CPU, *load, "backend=vllm-cpu"]) for n, load in CPU_LOADS.items()}
        path.write_text(json.dumps(real, indent=1) + "\n")
    else:
        real = json.loads(path.read_text())
    print("\nCPU build of vLLM (tiny-random, 2 cores) vs the simulator calibrated for it")
    print(f"{'scenario':15s}{'real req/s':>12s}{'sim req/s':>11s}{'error':>8s}  probes real | sim")
    for name, load in CPU_LOADS.items():
        sim = search([*CPU, *load])
        r, s = real[name]["capacity_rps"], sim["capacity_rps"]
        err = f"{100 * (s - r) / r:+7.0f}%" if r else "    n/a"
        print(f"{name:15s}{r:12.2f}{s:11.2f}{err:>8s}  {real[name]['probes']} | {sim['probes']}")


if __name__ == "__main__":
    main()
