"""How fast the simulator is: one 1000-request trial, and a 150-trial paired study with MLflow.

Part ``trial``: for each workload, one 1000-request trial of the default configuration on one
core (best of ``--repeats``): the whole ``SimBackend.evaluate`` (memory plan, engine, metrics),
and the engine alone with its pure-decode jumps on and off, side by side (same result); and the
whole trial under the ``slos-serve`` scheduler (target: 0.5 s).

Part ``study``: the paper's paired comparison, 5 seeds x (random, tba-tpe) x 15 trials, run as a
user runs it (``python -m sloguard.tune -m ...``: Hydra multirun, one MLflow run per study and a
nested run per trial in a fresh sqlite store), timed end to end.

Usage:
    python benchmarks/sim_speed.py                 # both parts
    python benchmarks/sim_speed.py --part trial --repeats 7
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sloguard.backends import BackendSettings
from sloguard.backends.sim import SimBackend, StepTimeModel, run_engine
from sloguard.backends.sim._engine import EngineSettings, make_jitter
from sloguard.backends.sim._memory import plan_memory
from sloguard.backends.sim.backend import step_noise
from sloguard.evaluation import slo_from_config
from sloguard.space import SearchSpace
from sloguard.tune import compose_config
from sloguard.workload import build_workload

WORKLOADS = ("chat", "chat-poisson", "summarize", "azure-conv", "azure-code")
REPO = Path(__file__).resolve().parents[1]


def _best(repeats: int, fn, *args, **kwargs) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return min(times)


def trial_part(repeats: int) -> None:
    print("one 1000-request trial on one core, default model/hardware/space, best of", repeats)
    print(f"{'workload':14s}{'steps':>8s}{'evaluate s':>12s}{'engine s':>10s}"
          f"{'step-by-step s':>16s}{'speed-up':>10s}{'slos-serve s':>14s}")  # fmt: skip
    for name in WORKLOADS:
        cfg = compose_config([f"workload={name}", "workload.num_requests=1000"])
        space = SearchSpace.from_config(cfg.space)
        knobs = space.complete({})
        workload = build_workload(cfg.workload)
        backend = SimBackend(BackendSettings.of(cfg))
        slo = slo_from_config(cfg)
        result = backend.evaluate(knobs, workload, slo, seed=0)
        plan, _ = plan_memory(cfg.model, cfg.hardware, knobs)
        settings = EngineSettings.of(knobs, plan.num_blocks, plan.block_size)
        step = StepTimeModel(cfg.model, cfg.hardware, knobs)
        jitter = make_jitter(np.random.default_rng(0), step_noise(cfg))

        whole = _best(repeats, backend.evaluate, knobs, workload, slo, seed=0)
        engine = (workload, settings, step, jitter, cfg.backend.timeout_s)
        fast = _best(repeats, run_engine, *engine, fast_decode=True)
        slow = _best(repeats, run_engine, *engine, fast_decode=False)
        slos = SimBackend(BackendSettings.of(compose_config(
            [f"workload={name}", "workload.num_requests=1000", "backend.scheduler=slos-serve"]
        )))  # fmt: skip
        planned = _best(repeats, slos.evaluate, knobs, workload, slo, seed=0)
        print(f"{name:14s}{int(result.server['num_steps']):8d}{whole:12.4f}{fast:10.4f}"
              f"{slow:16.4f}{slow / fast:9.1f}x{planned:14.4f}")  # fmt: skip


def study_part() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **{k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"},
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",
            "SLOGUARD_STUDY_DIR": f"{tmp}/studies",
            "SLOGUARD_OUTPUT_DIR": f"{tmp}/multirun",
        }
        argv = [sys.executable, "-m", "sloguard.tune", "-m", "seed=42,142,242,342,442",
                "optimizer=random,tba-tpe", "budget=15", "progress=false"]  # fmt: skip
        start = time.perf_counter()
        proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"study sweep failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        studies = sorted(p.name for p in Path(tmp, "studies").iterdir())
    print(f"paired study: {len(studies)} studies x 15 trials = {15 * len(studies)} trials "
          f"with MLflow logging (sqlite): {wall:.1f} s wall, {wall / (15 * len(studies)):.3f} "
          "s per trial")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["trial", "study", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cores", default="0", help="CPU cores to pin to, e.g. 0 or 0,1")
    args = parser.parse_args()
    os.sched_setaffinity(0, {int(c) for c in args.cores.split(",")})
    if args.part in ("trial", "all"):
        trial_part(args.repeats)
    if args.part in ("study", "all"):
        study_part()


if __name__ == "__main__":
    main()
