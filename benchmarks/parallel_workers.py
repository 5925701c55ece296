"""Parallel workers on one study: throughput against workers, ask latency, storage write cost.

Part ``workers``: a 24-trial study on the simulator whose backend sleeps ``--startup`` seconds per
trial (standing for a real server's launch), run as a user runs it (``python -m sloguard.tune
... workers=N``), for N = 1, 2, 4. Trials per hour end to end and while the workers ran (first
claim to last result), side by side, relative to workers=1 (target: >= 0.9 N while the startup
dominates).

Part ``ask``: the proposal step of a worker with 200 finished trials in the store, for tpe,
tba-tpe and tba (target <= 100 ms for tpe and tba-tpe): reading the trials, a proposer rebuilt
from all of them (a worker that joins or resumes), and a cached proposer told one more trial
(every later ask).

Part ``storage``: the storage writes of one trial (claim, worker stamp, heartbeat, proposal and
params, result, tell) for the journal file, sqlite and PostgreSQL (a throwaway server from
Debian's package), mean over 50 trials.

Usage:
    python benchmarks/parallel_workers.py                      # all parts
    python benchmarks/parallel_workers.py --part workers --startup 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

from sloguard.evaluation import TrialStep, slo_from_config
from sloguard.optimizer import create_optimizer
from sloguard.optimizer._tpe import suggest
from sloguard.space import SearchSpace
from sloguard.study import Proposer, StorageSpec, run_study, study_records
from sloguard.study._liveness import identity
from sloguard.study._trials import (
    FIXED,
    WORKER_ATTR,
    claim,
    enqueue_numbers,
    finished_trials,
    record_of,
    store_result,
)
from sloguard.testing.postgres import create_database, temporary_postgres
from sloguard.tune import compose_config

REPO = Path(__file__).resolve().parents[1]


def workers_part(startup: float, budget: int) -> None:
    print(
        f"{budget}-trial study on the simulator, backend.startup_sleep_s={startup:g} per trial, "
        "python -m sloguard.tune ... workers=N (tpe)"
    )
    print(f"{'workers':>8s}{'wall s':>9s}{'trials/h':>10s}{'x w=1':>8s}"
          f"{'trial-phase s':>15s}{'trials/h':>10s}{'x w=1':>8s}")  # fmt: skip
    base: tuple[float, float] | None = None
    for workers in (1, 2, 4):
        with tempfile.TemporaryDirectory() as tmp:
            env = {
                **os.environ,
                "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",
                "SLOGUARD_STUDY_DIR": f"{tmp}/studies",
                "SLOGUARD_OUTPUT_DIR": f"{tmp}/outputs",
            }
            args = [
                sys.executable, "-m", "sloguard.tune", "optimizer=tpe", f"budget={budget}",
                f"workers={workers}", "study_name=bench", f"backend.startup_sleep_s={startup}",
                "progress=false", "tracking.log_requests=false",
            ]  # fmt: skip
            start = time.perf_counter()
            subprocess.run(args, cwd=tmp, env=env, check=True, capture_output=True)
            wall = time.perf_counter() - start
            study = optuna.load_study(
                study_name="bench", storage=StorageSpec().open(Path(tmp) / "studies" / "bench")
            )
            trials = study.get_trials()
            first = min(t.datetime_start for t in trials if t.datetime_start)
            last = max(t.datetime_complete for t in trials if t.datetime_complete)
            phase = (last - first).total_seconds()
        rates = (budget * 3600 / wall, budget * 3600 / phase)
        base = base or rates
        print(
            f"{workers:8d}{wall:9.1f}{rates[0]:10.0f}{rates[0] / base[0]:8.2f}"
            f"{phase:15.1f}{rates[1]:10.0f}{rates[1] / base[1]:8.2f}"
        )


def _timed(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def ask_part(n_trials: int) -> None:
    print(f"\nask latency with {n_trials} finished trials in the store (ms, median of 5)")
    print(f"{'optimizer':10s}{'read trials':>13s}{'rebuilt':>10s}{'cached':>9s}{'study s':>9s}")
    for name in ("tpe", "tba-tpe", "tba"):
        with tempfile.TemporaryDirectory() as tmp:
            read, rebuilt, cached, study_s = _ask_latency(name, n_trials, Path(tmp))
        print(f"{name:10s}{read:13.1f}{rebuilt:10.1f}{cached:9.1f}{study_s:9.1f}")


def _ask_latency(name: str, n_trials: int, tmp: Path) -> tuple[float, float, float, float]:
    """Store ``n_trials`` real trials of ``name``, then time the next proposal's steps."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
    cfg = compose_config([
        "workload=smoke", f"optimizer={name}", f"budget={n_trials}", "progress=false",
        f"study_dir={tmp}/studies", "tracking.log_requests=false", "study_name=ask",
    ])  # fmt: skip
    start = time.perf_counter()
    run_study(cfg)
    study_s = time.perf_counter() - start
    study = optuna.load_study(
        study_name="ask", storage=StorageSpec().open(tmp / "studies" / "ask")
    )
    space = SearchSpace.from_config(cfg.space)

    def make():
        return create_optimizer(cfg.optimizer, space, cfg.seed, n_trials + 1)

    def finished():
        return [record_of(t) for t in finished_trials(study.get_trials(deepcopy=False))]

    records = finished()

    def cached() -> float:
        proposer = Proposer(make)
        proposer.propose(n_trials - 1, records[:-1], [])
        start = time.perf_counter()
        proposer.propose(n_trials, records, [])
        return time.perf_counter() - start

    return (
        _timed(finished),
        _timed(lambda: Proposer(make).propose(n_trials, records, [])),
        1000 * statistics.median(cached() for _ in range(5)),
        study_s,
    )


def _trial_writes(storage_url: str | None, directory: Path, trials: int) -> float:
    """Mean seconds of one trial's storage operations."""
    cfg = compose_config(["workload=smoke"])
    space = SearchSpace.from_config(cfg.space)
    step = TrialStep.from_config(cfg, space, slo_from_config(cfg))
    record = step.evaluate(space.sample(__import__("numpy").random.default_rng(0)), 0)
    spec = StorageSpec(storage_url)
    storage = spec.open(directory)
    study = optuna.create_study(study_name="w", storage=storage, direction="maximize")
    enqueue_numbers(study, range(trials))
    start = time.perf_counter()
    for _ in range(trials):
        trial_id = claim(study, storage, trials)
        assert trial_id is not None
        storage.set_trial_user_attr(trial_id, WORKER_ATTR, identity())
        storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]
        storage.set_trial_system_attr(trial_id, FIXED, record.params)
        suggest(optuna.Trial(study, trial_id), space)
        store_result(study, optuna.Trial(study, trial_id), record)
    seconds = (time.perf_counter() - start) / trials
    assert len(study_records(study.get_trials())) == trials
    return seconds


def storage_part(trials: int) -> None:
    print(f"\nstorage writes of one trial (ms, mean of {trials})")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [
            ("journal file", _trial_writes(None, Path(tmp), trials)),
            ("sqlite", _trial_writes(f"sqlite:///{tmp}/optuna.db", Path(tmp), trials)),
        ]
        try:
            with temporary_postgres() as server:
                url = create_database(server, "bench")
                rows.append(("postgresql", _trial_writes(url, Path(tmp), trials)))
        except FileNotFoundError as e:
            print(f"postgresql: skipped ({e})")
    base = rows[0][1]
    for name, seconds in rows:
        print(f"{name:14s}{1000 * seconds:8.1f} ms{seconds / base:8.2f}x journal")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "workers", "ask", "storage"), default="all")
    parser.add_argument("--startup", type=float, default=3.0, help="seconds slept per trial")
    parser.add_argument("--budget", type=int, default=24, help="trials of the workers part")
    parser.add_argument("--ask-trials", type=int, default=200)
    parser.add_argument("--write-trials", type=int, default=50)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.part in ("all", "workers"):
        workers_part(args.startup, args.budget)
    if args.part in ("all", "ask"):
        ask_part(args.ask_trials)
    if args.part in ("all", "storage"):
        storage_part(args.write_trials)


if __name__ == "__main__":
    main()
