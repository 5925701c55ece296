"""Wall time of a few tuning-suite studies, to compare two checkouts of the simulator.

Runs the same studies (problems x optimizers x seeds, ``run_one_study`` of
``tuning_suite.py``) one after another in this process and prints, per problem, the seconds
they took and each study's noise-free utility at the budget (the same figures in two checkouts
mean the same choices). Run it in each checkout, one after the other, never beside another
heavy job.

Usage:
    python benchmarks/suite_timing.py --problems reasoning-spec chatbot --optimizers tba-tpe random
"""

from __future__ import annotations

import argparse
import time

from tuning_suite import PROBLEMS, run_one_study

from sloguard.config import OPTIMIZER_NAMES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", choices=PROBLEMS, required=True)
    parser.add_argument("--optimizers", nargs="+", choices=OPTIMIZER_NAMES, default=["tba-tpe"])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--budget", type=int, default=30)
    args = parser.parse_args()
    total = 0.0
    for problem in args.problems:
        start = time.perf_counter()
        chosen = [
            run_one_study(
                (tuple(PROBLEMS[problem]), name, (f"optimizer={name}",), seed, args.budget)
            )["chosen"][args.budget]
            for name in args.optimizers
            for seed in range(args.seeds)
        ]
        seconds = time.perf_counter() - start
        total += seconds
        print(f"{problem:16s} {seconds:7.1f} s  chosen " + " ".join(f"{u:.3f}" for u in chosen))
    print(f"{'total':16s} {total:7.1f} s")


if __name__ == "__main__":
    main()
