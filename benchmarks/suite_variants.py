"""Optimizer variants scored against a stored tuning-suite run, without rerunning the others.

Runs only the variants' studies (every problem and seed of the stored run), plus the stored
run's recommended optimizer on seed 0 of every problem as a control: the simulator is
deterministic, so the control must score exactly as stored, else the stored run came from other
code and nothing is compared (exit 1). The stored optimizers' choices are recovered from their
regrets; the best known of a problem rises if a variant beats it, and every regret is taken
against it. Then, at each cutoff, the suite's table is printed once per variant, tested against
every other optimizer (one-sided paired Wilcoxon: does the variant have the lower regret?).

A variant's study takes as long as one of the suite's: two variants took 1,347 s on an AVX2
machine, where the whole run took 4,542 s. Problems with no feasible configuration known are
left out, as the suite leaves them out.

Usage:
    python benchmarks/suite_variants.py --against docs/benchmarks/tuning_suite.json \
        --variant 'b40:optimizer=tba-tpe optimizer.anneal=budget'
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

from tuning_suite import CUTOFFS, compare, parse_variants, print_summary, run_one_study

Scores = dict[str, dict[str, dict[int, dict[str, Any]]]]


def stored_choices(stored: dict[str, Any]) -> dict[tuple[str, str, int, int], float]:
    """(problem, optimizer, seed, cutoff) -> the noise-free utility of the study's choice."""
    chosen = {}
    for problem, record in stored["problems"].items():
        best = record["best_known"]
        for name, per_seed in record.get("scores", {}).items():
            for seed, score in per_seed.items():
                for cutoff, regret in score["regret"].items():
                    chosen[problem, name, int(seed), int(cutoff)] = best * (1 - regret / 100)
    return chosen


def rescore(
    stored: dict[str, Any], chosen: dict[tuple[str, str, int, int], float], cutoffs: list[int]
) -> Scores:
    """Regrets against each problem's best known, raised by whatever the variants found."""
    scores: Scores = {}
    for problem, record in stored["problems"].items():
        if record["best_known"] <= 0:
            continue  # no feasible configuration known: the suite scores nobody there
        mine = {k: u for k, u in chosen.items() if k[0] == problem}
        best = max([record["best_known"], *mine.values()])
        per = scores.setdefault(problem, {})
        for (_, name, seed, cutoff), utility in mine.items():
            if cutoff in cutoffs:
                entry = per.setdefault(name, {}).setdefault(seed, {"regret": {}})
                entry["regret"][cutoff] = 100.0 * max(0.0, best - utility) / best
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="a tuning_suite.py JSON output")
    parser.add_argument(
        "--variant",
        action="append",
        required=True,
        metavar="NAME:OVERRIDES",
        help="e.g. 'b40:optimizer=tba-tpe optimizer.anneal=budget' (repeatable)",
    )
    parser.add_argument("--control", default="tba-tpe", help="a stored optimizer, rerun on seed 0")
    parser.add_argument("--workers", type=int, default=2, help="processes (at least 1)")
    args = parser.parse_args()
    if args.workers < 1:
        parser.error(f"--workers {args.workers}: give at least 1")
    try:
        stored = json.loads(Path(args.against).read_text())
        budget, seeds = int(stored["budget"]), int(stored["seeds"])
        known = {name for r in stored["problems"].values() for name in r.get("scores", {})}
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
        parser.error(f"--against {args.against}: not a tuning_suite.py output ({exc})")
    if args.control not in known:
        stored_names = ", ".join(sorted(known))
        parser.error(f"--control {args.control}: not in the stored run ({stored_names})")
    variants = parse_variants(parser, args.variant, known, budget)
    control = ("optimizer=" + args.control,)
    # problems with no feasible configuration known: the suite scores nobody there
    problems = {tuple(r["overrides"]): p for p, r in stored["problems"].items()
                if r["best_known"] > 0}  # fmt: skip
    tasks = []
    for overrides in problems:
        tasks.append((overrides, f"{args.control} (control)", control, 0, budget))
        tasks += [(overrides, n, v, s, budget) for n, v in variants.items() for s in range(seeds)]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    start = time.perf_counter()
    with mp.get_context("spawn").Pool(args.workers) as pool:
        studies = pool.map(run_one_study, tasks, chunksize=1)
    print(f"{len(tasks)} studies of {budget} trials, {time.perf_counter() - start:.0f} s")
    chosen = stored_choices(stored)
    differ = []
    for task, study in zip(tasks, studies, strict=True):
        problem = problems[task[0]]
        for cutoff, utility in study["chosen"].items():
            if study["optimizer"] in variants:
                chosen[problem, study["optimizer"], study["seed"], cutoff] = utility
            elif abs(utility - chosen.get((problem, args.control, 0, cutoff), -1.0)) > 1e-6:
                differ.append(f"{problem}@{cutoff}")
    if differ:
        print(f"the control does not reproduce the stored run ({', '.join(differ[:5])}): "
              "it came from other code; rerun tuning_suite.py")  # fmt: skip
        sys.exit(1)
    print(f"control: {args.control} on seed 0 scores as stored on all {len(problems)} problems")
    cutoffs = [c for c in CUTOFFS if c <= budget]
    scores = rescore(stored, chosen, cutoffs)
    for cutoff in cutoffs:
        for name in variants:
            table = compare(scores, cutoff, name)
            print_summary(table, cutoff, len(scores), seeds, name)


if __name__ == "__main__":
    main()
