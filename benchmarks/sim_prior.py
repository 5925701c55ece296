"""The calibrated simulator as a prior: real trials to within 5% of the best, with and without.

For each seed, two studies of ``--budget`` trials run on the real CPU build of vLLM (one server
launch per trial) with the same optimizer: one cold (``prior=none``), one warm-started by a
simulated study on the calibrated hardware config (``prior=sim``: its best ``--top-k``
configurations first, its trials priming the optimizer's feasibility model). The problem is a
closed-loop chat load on the tiny model with the default SLO (TTFT p99 500 ms, ITL p99 100 ms),
where only part of ``space=cpu-small`` meets the SLO and graph mode beats eager.

Scored per study: the trials until one measured within 5% of the best known goodput (the best
any trial of either arm measured), budget + 1 if never; and the best goodput found. Each study is
saved to ``--out`` as it finishes; a rerun skips the studies already there (``--fresh`` not).

Usage:
    python benchmarks/sim_prior.py                    # 5 seeds x 5 trials x 2 arms (~50 min)
    python benchmarks/sim_prior.py --seeds 1 --budget 2 --out /tmp/p.json   # a quick look
    python benchmarks/sim_prior.py --backend sim --out /tmp/p.json          # no server (seconds)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from _steps import trial_step
from scipy.stats import spearmanr, wilcoxon

from sloguard.evaluation import TrialStep, slo_from_config
from sloguard.optimizer import create_optimizer
from sloguard.prior import simulate_prior
from sloguard.space import SearchSpace
from sloguard.tune import compose_config

PROBLEM = [
    "model=tiny-random",
    "hardware=cpu",
    "space=cpu-small",
    "workload=chat",
    "workload.num_requests=64",
    "workload.concurrency=16",
    "workload.prompt_len={dist:lognormal,mean:96,median:80,low:16,high:160}",
    "workload.output_len={dist:lognormal,mean:64,median:48,low:8,high:96}",
    "slo=default",
]
ARMS = ("none", "sim")
WITHIN = 0.05
SEEDS = (42, 142, 242, 342, 442, 542, 642, 742, 842, 942)


def run_study(args: argparse.Namespace, seed: int, prior: str, log_dir: Path) -> dict[str, Any]:
    """One study of ``args.budget`` trials; its trials as plain records."""
    cfg = compose_config(
        [
            *PROBLEM,
            f"backend={args.backend}",
            f"optimizer={args.optimizer}",
            f"seed={seed}",
            f"budget={args.budget}",
            f"prior={prior}",
            f"prior.trials={args.prior_trials}",
            f"prior.top_k={args.top_k}",
        ]
    )
    space = SearchSpace.from_config(cfg.space)
    step = TrialStep.from_config(cfg, space, slo_from_config(cfg), log_dir=log_dir)
    optimizer = create_optimizer(cfg.optimizer, space, seed, args.budget)
    start = time.perf_counter()
    warm = simulate_prior(cfg)
    records = step.run_untracked(
        optimizer if warm is None else warm.warm_start(optimizer), args.budget
    )
    return {
        "seed": seed,
        "prior": prior,
        "seconds": time.perf_counter() - start,
        "trials": [
            {
                "params": r.params,
                "phase": r.phase,
                "feasible": r.result.feasible,
                "crash": r.result.crash.category if r.result.crash else None,
                "goodput_tok_s": float(r.result.metrics.get("goodput_tok_s", 0.0))
                if r.result.feasible
                else 0.0,
                "ttft_p99_ms": r.result.metrics.get("ttft_p99_ms"),
                "itl_p99_ms": r.result.metrics.get("itl_p99_ms"),
            }
            for r in records
        ],
    }


def trials_to_within(study: dict[str, Any], best_known: float, budget: int) -> int:
    """Trials until one measured within :data:`WITHIN` of ``best_known`` (budget + 1: never)."""
    for i, trial in enumerate(study["trials"], start=1):
        if trial["goodput_tok_s"] >= (1 - WITHIN) * best_known:
            return i
    return budget + 1


def report(studies: list[dict[str, Any]], budget: int) -> str:
    """The per-seed table and the summary lines."""
    best_known = max(t["goodput_tok_s"] for s in studies for t in s["trials"])
    by_arm: dict[str, dict[int, dict[str, Any]]] = {a: {} for a in ARMS}
    for study in studies:
        by_arm[study["prior"]][study["seed"]] = study
    seeds = sorted(set(by_arm["none"]) & set(by_arm["sim"]))
    lines = [
        f"best known goodput {best_known:.1f} tok/s (the best trial of either arm); "
        f"'to 5%': trials until one measured >= {(1 - WITHIN) * best_known:.1f} "
        f"({budget + 1} = not within {budget})",
        "",
        "| seed | to 5%, prior=none | to 5%, prior=sim | best, none | best, sim | "
        "feasible, none | feasible, sim |",
        "|---|---|---|---|---|---|---|",
    ]
    to5: dict[str, list[int]] = {a: [] for a in ARMS}
    for seed in seeds:
        row = [str(seed)]
        cells: dict[str, list[str]] = {"to": [], "best": [], "feasible": []}
        for arm in ARMS:
            study = by_arm[arm][seed]
            n = trials_to_within(study, best_known, budget)
            to5[arm].append(n)
            cells["to"].append(str(n))
            cells["best"].append(f"{max(t['goodput_tok_s'] for t in study['trials']):.1f}")
            feasible = sum(t["feasible"] for t in study["trials"])
            cells["feasible"].append(f"{feasible}/{len(study['trials'])}")
        lines.append(
            "| " + " | ".join(row + cells["to"] + cells["best"] + cells["feasible"]) + " |"
        )
    if seeds:
        lines.append("")
        for arm in ARMS:
            reached = sum(n <= budget for n in to5[arm])
            lines.append(
                f"prior={arm}: to 5% median {statistics.median(to5[arm]):g}, mean "
                f"{statistics.mean(to5[arm]):.2f} trials; within 5% in {reached} of {len(seeds)} "
                f"studies; real seconds per study {statistics.mean(_seconds(by_arm[arm])):.0f}"
            )
        diffs = [a - b for a, b in zip(to5["none"], to5["sim"], strict=True)]
        if any(diffs):
            p = wilcoxon(to5["sim"], to5["none"], alternative="less").pvalue
            lines.append(f"paired one-sided Wilcoxon (prior=sim needs fewer): p = {p:.4f}")
    lines.append(_agreement(studies))
    return "\n".join(lines)


def _agreement(studies: list[dict[str, Any]]) -> str:
    """How the simulator (noise-free, as the prior sees it) agrees with the server on every
    configuration the server ran: feasibility verdicts and the rank of goodput."""
    step = trial_step((*PROBLEM, "backend=sim"), noise=False)
    real, sim = [], []
    for trial in (t for s in studies for t in s["trials"] if t["crash"] is None):
        result = step.evaluate(trial["params"], 0).result
        real.append((trial["feasible"], trial["goodput_tok_s"]))
        sim.append((result.feasible, float(result.metrics.get("goodput_tok_s", 0.0))))
    same = sum(r[0] == s[0] for r, s in zip(real, sim, strict=True))
    both = [(r[1], s[1]) for r, s in zip(real, sim, strict=True) if r[0] and s[0]]
    rho = spearmanr(*zip(*both, strict=True)).statistic if len(both) >= 3 else float("nan")
    ratio = statistics.median(s / r for r, s in both) if both else float("nan")
    return (
        f"simulator vs server on the {len(real)} configurations the server ran: same "
        f"feasibility verdict for {same}; over the {len(both)} feasible on both, goodput "
        f"Spearman rho {rho:.2f} and sim/server goodput median {ratio:.2f}"
    )


def _seconds(studies: dict[int, dict[str, Any]]) -> list[float]:
    return [s["seconds"] for s in studies.values()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="paired seeds (default 5)")
    parser.add_argument("--budget", type=int, default=5, help="real trials per study")
    parser.add_argument("--optimizer", default="tba-tpe")
    parser.add_argument("--prior-trials", type=int, default=40, help="simulated trials")
    parser.add_argument("--top-k", type=int, default=3, help="simulated best configs run first")
    parser.add_argument("--backend", default="vllm-cpu", help="vllm-cpu, or sim for a dry run")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/sim_prior.json"))
    parser.add_argument("--fresh", action="store_true", help="ignore the studies in --out")
    args = parser.parse_args()
    if not 1 <= args.seeds <= len(SEEDS):
        parser.error(f"--seeds {args.seeds} is invalid; it must be 1 to {len(SEEDS)}")
    compose_config([*PROBLEM, f"backend={args.backend}", f"optimizer={args.optimizer}"])
    saved = json.loads(args.out.read_text()) if args.out.exists() and not args.fresh else {}
    same = saved.get("settings") == _settings(args)
    studies: list[dict[str, Any]] = saved.get("studies", []) if same else []
    done = {(s["seed"], s["prior"]) for s in studies}
    log_root = Path("outputs") / "sim_prior"
    for seed in SEEDS[: args.seeds]:
        for arm in ARMS:
            if (seed, arm) in done:
                continue
            study = run_study(args, seed, arm, log_root / f"seed{seed}-{arm}")
            studies.append(study)
            _save(args.out, {"settings": _settings(args), "studies": studies})
            print(
                f"seed {seed} prior={arm}: "
                + " ".join(f"{t['goodput_tok_s']:.0f}" for t in study["trials"])
                + f" tok/s ({study['seconds']:.0f} s)",
                flush=True,
            )
    print(report(studies, args.budget))


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("budget", "optimizer", "prior_trials", "top_k", "backend")
    return {"problem": PROBLEM, **{k: getattr(args, k) for k in keys}}


def _save(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    main()
