"""A suite of tuning problems on the simulator that can tell optimizers apart, and how each fares.

Each problem is a set of config overrides (an overlay on the defaults) chosen so that the answer
is not flat: capacity at the attainment target for open-loop workloads (it does not saturate as
goodput at a fixed offered rate does), goodput under closed-loop concurrency, tight SLOs,
crash-prone memory settings (repair off, a big model on a small card), Azure traces, the
SLOs-Serve scenarios, capacity per GPU on a 4-GPU node, and spaces widened with the simulator's
serving knobs and vLLM's scheduling policy, KV-cache dtype, block size, parallel sizes and
n-gram speculation length; and the fewest GPUs that serve a target rate.

Per problem, the best known configuration is the best noise-free utility of a long random
exploration, the auto_tune grid and every study's choices. Every optimizer then runs ``--seeds``
studies of ``--budget`` trials (noise on, as a user sees it). At each cutoff (10, 15, 30 trials)
the study's chosen configuration (its best feasible trial so far) is re-run noise-free and
scored:

    regret        (best known - its noise-free utility) / best known, in %; 100 when the study
                  has found nothing feasible or its choice is infeasible re-run noise-free.
    crash waste   share of the budget spent on trials that crashed, in %.
    to 5%         trials until one measured within 5% of the best known (budget + 1: never).

The optimizers are every one in ``sloguard.optimizer``, baselines included: random, cold TPE
(crashes as failed trials, psap's way), vLLM's auto_tune grid, the constrained GP and the
SCOOT-style TPE with a random-forest feasibility screen (``scoot``).

Across problems x seeds: each optimizer's mean rank (1 = lowest regret, ties averaged), its win
rate against the recommended optimizer, and a paired one-sided Wilcoxon signed-rank test (does the
recommended one have lower regret?). A problem where nothing feasible is known is reported as such
and left out of the ranks.

Usage:
    python benchmarks/tuning_suite.py                    # 19 problems, 5 seeds x 30 trials
    python benchmarks/tuning_suite.py --quick            # 4 problems, 3 seeds x 15 trials
    python benchmarks/tuning_suite.py --problems paper crash-prone --optimizers random tba-tpe
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import time
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from _steps import trial_step
from omegaconf import DictConfig
from scipy.stats import rankdata, wilcoxon
from tqdm import tqdm

from sloguard.config import OPTIMIZER_NAMES
from sloguard.exceptions import ConfigError
from sloguard.optimizer import create_optimizer
from sloguard.result import TrialResult
from sloguard.study import best_trial
from sloguard.tune import compose_config

PROBLEMS: dict[str, list[str]] = {
    # the seed paper's setting: Qwen2-1.5B on an A100 40 GB, 32 chat users (closed loop)
    "paper": [],
    "paper-strict": ["slo=strict"],
    # repair and memory guard off, a big model on a small card: most of the space crashes
    "crash-prone": [
        "model=llama-3.1-8b",
        "hardware=l4-24gb",
        "space.repair=false",
        "slo=relaxed",
        "workload.concurrency=16",
    ],
    "l4-capacity": [
        "model=llama-3.1-8b",
        "hardware=l4-24gb",
        "space.repair=false",
        "workload=chatbot",
        "objective=capacity",
    ],
    "h100-llama": ["model=llama-3.1-8b", "hardware=h100-80gb", "workload.concurrency=64"],
    # the SLOs-Serve scenarios, scored by capacity at the attainment target
    "chatbot": ["workload=chatbot", "objective=capacity"],
    "coding": ["workload=coding", "objective=capacity"],
    "summarization": ["workload=summarization", "objective=capacity"],
    "mixed-scheduler": [
        "workload=mixed",
        "objective=capacity",
        "space.scheduler=[vllm,slos-serve]",
        "space.scheduling_policy=[fcfs,priority]",
    ],
    # later rounds reuse the round before from the prefix cache, in whole KV blocks
    "tool-calling": [
        "workload=tool-calling",
        "objective=capacity",
        "space.block_size=[16,32,64,128]",
    ],
    "reasoning-spec": [
        "workload=reasoning",
        "objective=capacity",
        "space.scheduler=[vllm,slos-serve]",
        "space.spec_decode=[false,true]",
    ],
    # shaped like the Azure conversation trace: bursty open-loop arrivals, long prompts
    "azure-conv": ["workload=azure-conv", "objective=capacity"],
    # Qwen2-1.5B on an L4: 48 users; then a strict SLO with repair off (vLLM's refusals happen):
    # a narrow feasible region
    "l4-qwen": ["hardware=l4-24gb", "workload.concurrency=48"],
    "l4-qwen-strict": ["hardware=l4-24gb", "slo=strict", "space.repair=false"],
    # the wider space: an fp8 KV cache doubles the tokens an L4 holds for Llama-3.1-8B; a T4
    # refuses it (and fp8 weights), so half of that space crashes at startup
    "l4-kv-fp8": [
        "model=llama-3.1-8b",
        "hardware=l4-24gb",
        "workload=chatbot",
        "objective=capacity",
        "space.kv_cache_dtype=[auto,fp8]",
    ],
    # four L4s over PCIe: Llama-3.1-8B sharded over 1, 2 or 4 of them (more KV cache, all-reduces
    # on every layer) in 1, 2 or 4 engines, scored per GPU used; layouts needing more than 4 GPUs
    # are refused
    "l4x4-per-gpu": [
        "model=llama-3.1-8b",
        "hardware=4xl4-24gb",
        "workload=chatbot",
        "objective=capacity_per_gpu",
        "space.tensor_parallel_size=[1,2,4,8]",
        "space.data_parallel_size=[1,2,4]",
    ],
    # vLLM's n-gram speculation: each verified draft costs compute that a full batch lacks
    "chatbot-ngram": [
        "workload=chatbot",
        "objective=capacity",
        "space.num_speculative_tokens=[0,1,2,3,4]",
    ],
    # the same node asked the question AIConfigurator answers: the fewest GPUs (replicas of one
    # layout) that serve 40 req/s
    "l4x4-gpus-for-rate": [
        "model=llama-3.1-8b",
        "hardware=4xl4-24gb",
        "workload=chatbot",
        "objective=gpus_for_rate",
        "capacity.target_rps=40",
        "space.tensor_parallel_size=[1,2,4,8]",
        "space.data_parallel_size=[1,2,4]",
    ],
    "t4-kv-fp8": [
        "hardware=t4-16gb",
        "space.kv_cache_dtype=[auto,fp8]",
        "space.repair=false",
        "workload.concurrency=24",
    ],
}
QUICK = ("paper", "crash-prone", "l4-qwen-strict", "coding")
RECOMMENDED = "tba-tpe"
CUTOFFS = (10, 15, 30)
WITHIN = 0.05  # "to 5%"


def _utility(result: TrialResult) -> float:
    """What the problem maximises (goodput tok/s or capacity req/s); 0 unless feasible."""
    return float(result.utility or 0.0) if result.feasible else 0.0


@cache
def _true_utility(overrides: tuple[str, ...], params: tuple[tuple[str, Any], ...]) -> float:
    return _utility(trial_step(overrides, noise=False).evaluate(dict(params), 0).result)


def true_utility(overrides: tuple[str, ...], params: dict[str, Any]) -> float:
    """Noise-free utility of ``params`` as a study launches them (each measured once per
    process: the noise-free simulator is deterministic)."""
    return _true_utility(overrides, tuple(sorted(params.items())))


@cache
def _config(overrides: tuple[str, ...]) -> DictConfig:
    return compose_config(list(overrides))


def explore(args: tuple[tuple[str, ...], str, int, int]) -> tuple[float, dict[str, Any] | None]:
    """A noise-free study (random or the grid): its best utility and configuration."""
    overrides, name, seed, budget = args
    step = dataclasses.replace(trial_step(overrides, noise=False), seed=seed)
    cfg = _config((*overrides, f"optimizer={name}"))
    records = step.run_untracked(create_optimizer(cfg.optimizer, step.space, seed, budget), budget)
    best = max(records, key=lambda r: _utility(r.result))
    return _utility(best.result), best.params


def run_one_study(
    args: tuple[tuple[str, ...], str, tuple[str, ...], int, int],
) -> dict[str, Any]:
    """One study without tracking; its choice at each cutoff re-run noise-free."""
    overrides, name, optimizer_overrides, seed, budget = args
    start = time.perf_counter()
    step = dataclasses.replace(trial_step(overrides, noise=True), seed=seed)
    cfg = _config((*overrides, *optimizer_overrides))
    optimizer = create_optimizer(cfg.optimizer, step.space, seed, budget)
    records = step.run_untracked(optimizer, budget)
    chosen = {}
    for cutoff in (c for c in CUTOFFS if c <= budget):
        best = best_trial(records[:cutoff])
        chosen[cutoff] = (
            (true_utility(overrides, best.params), best.params) if best else (0.0, None)
        )
    return {
        "optimizer": name,
        "seed": seed,
        "chosen": {c: u for c, (u, _) in chosen.items()},
        "chosen_params": {c: p for c, (_, p) in chosen.items()},
        "measured": [_utility(r.result) for r in records],
        "crashed": [r.result.crash is not None for r in records],
        "seconds": time.perf_counter() - start,
    }


def _run_task(task: tuple[str, Any]) -> Any:
    """An exploration or a study, by the name the task carries."""
    kind, args = task
    return explore(args) if kind == "explore" else run_one_study(args)


def score(study: dict[str, Any], best_known: float) -> dict[str, Any]:
    """Regret at each cutoff, crash waste and trials to within 5% of one study."""
    measured = study["measured"]
    hit = next((i + 1 for i, u in enumerate(measured) if u >= (1 - WITHIN) * best_known), None)
    return {
        "regret": {
            c: 100.0 * max(0.0, best_known - u) / best_known for c, u in study["chosen"].items()
        },
        "crash_waste_pct": 100.0 * sum(study["crashed"]) / len(measured),
        "to_within": hit if hit is not None else len(measured) + 1,
    }


def compare(
    scores: dict[str, dict[str, dict[int, dict[str, Any]]]], cutoff: int, recommended: str
) -> dict[str, dict[str, float]]:
    """Mean rank, mean regret, win rate and Wilcoxon p against ``recommended`` over problems x
    seeds.

    Args:
        scores: problem -> optimizer -> seed -> the study's score.
    """
    optimizers = sorted({o for per in scores.values() for o in per})
    regrets: dict[str, list[float]] = {o: [] for o in optimizers}
    ranks: dict[str, list[float]] = {o: [] for o in optimizers}
    for per in scores.values():
        seeds = sorted(set.intersection(*(set(per[o]) for o in optimizers)))
        for seed in seeds:
            row = [per[o][seed]["regret"][cutoff] for o in optimizers]
            for o, r, rank in zip(optimizers, row, rankdata(row), strict=True):
                regrets[o].append(r)
                ranks[o].append(float(rank))
    out = {}
    for o in optimizers:
        entry = {"mean_regret": float(np.mean(regrets[o])), "mean_rank": float(np.mean(ranks[o]))}
        if o != recommended and recommended in regrets:
            ours, theirs = np.array(regrets[recommended]), np.array(regrets[o])
            entry["win_rate"] = float(np.mean(ours < theirs) + 0.5 * np.mean(ours == theirs))
            differs = ours != theirs
            entry["p"] = (
                float(wilcoxon(ours[differs], theirs[differs], alternative="less").pvalue)
                if differs.sum() >= 1
                else 1.0
            )
        out[o] = entry
    return out


def _regret_figure(scores: dict[str, Any], budget: int, path: Path) -> None:
    """Mean regret of each optimizer at each cutoff, one panel per problem."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = list(scores)
    cols = 4
    rows = -(-len(problems) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    cutoffs = [c for c in CUTOFFS if c <= budget]
    for ax, problem in zip(axes.flat, problems, strict=False):
        for name, per_seed in scores[problem].items():
            mean = [np.mean([s["regret"][c] for s in per_seed.values()]) for c in cutoffs]
            ax.plot(cutoffs, mean, marker="o", label=name)
        ax.set_title(problem, fontsize=9)
        ax.set_xlabel("trials")
        ax.set_ylabel("mean regret %")
    for ax in list(axes.flat)[len(problems) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse_variants(
    parser: argparse.ArgumentParser, specs: list[str], taken: set[str], budget: int
) -> dict[str, tuple[str, ...]]:
    """``NAME:OVERRIDES`` specs as overrides by name; a malformed spec, a name in ``taken`` or
    overrides that do not compose end the run in one line."""
    variants: dict[str, tuple[str, ...]] = {}
    for spec in specs:
        name, _, overrides = spec.partition(":")
        if not name or not overrides:
            parser.error(f"--variant {spec!r}: give NAME:OVERRIDES")
        if name in taken or name in variants:
            names = ", ".join(sorted(taken | set(variants)))
            parser.error(f"--variant {spec!r}: {name} is taken; name it apart from {names}")
        try:
            compose_config([*overrides.split(), f"budget={budget}"])
        except ConfigError as exc:
            parser.error(f"--variant {spec!r}: {exc}")
        variants[name] = tuple(overrides.split())
    return variants


def _optimizers(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> dict[str, tuple[str, ...]]:
    """The optimizers and variants to run, by name; a bad count or variant ends the run here,
    in one line, before anything is written."""
    for flag, value, least in (
        ("--seeds", args.seeds, 1),
        ("--budget", args.budget, min(CUTOFFS)),
        ("--explore", args.explore, 1),
        ("--workers", args.workers, 1),
    ):
        if value < least:
            parser.error(f"{flag} {value}: give at least {least}")
    optimizers = {name: (f"optimizer={name}",) for name in args.optimizers}
    optimizers |= parse_variants(parser, args.variant, set(optimizers), args.budget)
    if args.recommended not in optimizers:
        parser.error(f"--recommended {args.recommended}: not run (give one of "
                     f"{', '.join(optimizers)})")  # fmt: skip
    return optimizers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", choices=PROBLEMS, help="default: all")
    parser.add_argument(
        "--optimizers",
        nargs="+",
        default=list(OPTIMIZER_NAMES),
        choices=OPTIMIZER_NAMES,
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:OVERRIDES",
        help="an optimizer with settings, run beside the others, e.g. "
        "'tba-tpe-d:optimizer=tba-tpe optimizer.start=defaults' (repeatable)",
    )
    parser.add_argument("--recommended", default=RECOMMENDED, help="tested against the others")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=int, default=30)
    parser.add_argument("--explore", type=int, default=150, help="random noise-free trials")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="4 problems, 3 seeds x 15 trials, 60 explored (sets --seeds, --budget, --explore)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output", default="tuning_suite.json")
    args = parser.parse_args()
    if args.quick:
        args.problems = args.problems or list(QUICK)
        args.seeds, args.budget, args.explore = 3, 15, 60
        args.optimizers = [o for o in args.optimizers if o != "constrained-bo"]
    problems = args.problems or list(PROBLEMS)
    optimizers = _optimizers(parser, args)
    start = time.perf_counter()
    # one thread per worker process: the GP baseline's PyTorch would otherwise oversubscribe
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ctx = mp.get_context("spawn")
    explorations: list[tuple[str, Any]] = [
        ("explore", (tuple(PROBLEMS[p]), "random", 10_000 + i, args.explore))
        for i, p in enumerate(problems)
    ] + [("explore", (tuple(PROBLEMS[p]), "grid", 0, args.budget)) for p in problems]
    jobs = [(p, o, s) for p in problems for o in optimizers for s in range(args.seeds)]
    studies_args = [(tuple(PROBLEMS[p]), o, optimizers[o], s, args.budget) for p, o, s in jobs]
    # one queue, the long explorations first: no worker waits for the other between phases
    tasks = explorations + [("study", a) for a in studies_args]
    with ctx.Pool(args.workers) as pool:
        done = list(
            tqdm(
                pool.imap(_run_task, tasks),
                total=len(tasks),
                desc="explorations and studies",
                mininterval=10,
            )
        )
    found, studies = done[: len(explorations)], done[len(explorations) :]
    n = len(problems)
    out: dict[str, Any] = {"budget": args.budget, "seeds": args.seeds, "problems": {}}
    scores: dict[str, dict[str, dict[int, dict[str, Any]]]] = {}
    print(f"{len(jobs)} studies of {args.budget} trials, {time.perf_counter() - start:.0f} s")
    for i, problem in enumerate(problems):
        mine = [s for s, job in zip(studies, jobs, strict=True) if job[0] == problem]
        known = [found[i], found[n + i]]
        known += [(u, s["chosen_params"][c]) for s in mine for c, u in s["chosen"].items()]
        best_known, best_params = max(known, key=lambda k: k[0])
        record: dict[str, Any] = {"overrides": PROBLEMS[problem], "best_known": best_known}
        out["problems"][problem] = record
        if best_known <= 0:
            print(f"\n=== {problem}: no feasible configuration known (left out of the ranks)")
            continue
        record["best_params"] = best_params
        per = scores.setdefault(problem, {})
        for s in mine:
            per.setdefault(s["optimizer"], {})[s["seed"]] = score(s, best_known)
        _print_problem(problem, best_known, per, args.budget)
        record["scores"] = per
    spent = {o: sum(s["seconds"] for s, job in zip(studies, jobs, strict=True) if job[1] == o)
             for o in optimizers}  # fmt: skip
    out["study_seconds"] = spent
    print("\nseconds spent in studies (trials and optimizer), all problems and seeds:")
    print("  " + ", ".join(f"{o} {t:.0f}" for o, t in spent.items()))
    out["summary"] = {}
    for cutoff in (c for c in CUTOFFS if c <= args.budget):
        table = compare(scores, cutoff, args.recommended)
        out["summary"][cutoff] = table
        print_summary(table, cutoff, len(scores), args.seeds, args.recommended)
    Path(args.output).write_text(json.dumps(out, indent=1, default=str))
    figure = Path(args.output).with_suffix(".png")
    _regret_figure(scores, args.budget, figure)
    print(f"\nwrote {args.output} and {figure}; {time.perf_counter() - start:.0f} s in all")


def _print_problem(problem: str, best_known: float, per: dict[str, Any], budget: int) -> None:
    cutoffs = [c for c in CUTOFFS if c <= budget]
    overlay = " ".join(PROBLEMS[problem]) or "(defaults)"
    print(f"\n=== {problem}: {overlay}; best known {best_known:.1f}")
    print(f"{'optimizer':15s}" + "".join(f"{f'regret@{c}':>11s}" for c in cutoffs)
          + f"{'crash %':>9s}{'to 5%':>7s}")  # fmt: skip
    for name, seeds in per.items():
        regret = [np.mean([s["regret"][c] for s in seeds.values()]) for c in cutoffs]
        waste = np.mean([s["crash_waste_pct"] for s in seeds.values()])
        to = np.median([s["to_within"] for s in seeds.values()])
        print(f"{name:15s}" + "".join(f"{r:11.2f}" for r in regret) + f"{waste:9.1f}{to:7.0f}")


def print_summary(
    table: dict[str, dict[str, float]], cutoff: int, problems: int, seeds: int, recommended: str
) -> None:
    """Print one cutoff's table across problems (from :func:`compare`), best mean rank first."""
    print(f"\n=== all problems at {cutoff} trials ({problems} problems x {seeds} seeds)")
    print(f"{'optimizer':15s}{'mean regret %':>14s}{'mean rank':>11s}"
          f"  {f'{recommended} wins':>14s}{'p (1-sided)':>13s}")  # fmt: skip
    for name, row in sorted(table.items(), key=lambda kv: kv[1]["mean_rank"]):
        wins = f"{row['win_rate']:.2f}" if "win_rate" in row else "-"
        p = f"{row['p']:.4f}" if "p" in row else "-"
        print(f"{name:15s}{row['mean_regret']:14.2f}{row['mean_rank']:11.2f}  {wins:>14s}{p:>13s}")


if __name__ == "__main__":
    main()
