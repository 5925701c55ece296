"""Paired-seed statistics of a comparison, from MLflow: per study, per optimizer, Mann-Whitney.

Usage:
    python analysis/compute_multiseed_stats.py --comparison paper-repro --summary-out summary.json

Per study: best latency and goodput among feasible trials, feasible trials, crashes, crash
waste, trials in the fast cluster, first fast-cluster trial, post-hit consistency. Across seeds:
mean and sd per optimizer, Mann-Whitney U of the candidate against the baseline (scipy; two-sided
and one-sided in the direction that favours the candidate) and the cross-seed sd ratio of the
best latency.

The fast cluster: feasible trials whose latency (``--latency-metric``, default the median
end-to-end latency) is within ``--delta`` (10%) of the best latency any study of the comparison
reached. Post-hit consistency: the share of the trials after a study's first fast-cluster trial
that are in the cluster.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

from analysis._mlflow import load_comparison
from analysis._options import add_arguments
from sloguard.tracking import names

# statistic -> the direction in which it favours an optimizer
BETTER: dict[str, str] = {
    "fast_trials": "greater",
    "consistency": "greater",
    "best_latency_ms": "less",
    "best_goodput_tok_s": "greater",
    "best_capacity_rps": "greater",  # capacity studies (objective=capacity...) only
    "best_capacity_per_gpu_rps": "greater",  # objective=capacity_per_gpu only
    "best_target_per_gpu_rps": "greater",  # objective=gpus_for_rate only
    "feasible_trials": "greater",
    "crash_waste_pct": "less",
}
# the seed paper's Table: (random mean, sd, tba-tpe mean, sd, p as published)
PUBLISHED: dict[str, tuple[float, float, float, float, float]] = {
    "fast_trials": (7.40, 2.51, 10.20, 1.10, 0.014),
    "consistency": (0.539, 0.224, 0.876, 0.123, 0.010),
    "best_latency_ms": (470.52, 10.00, 465.69, 2.26, 0.84),
}
# each capacity objective's trial metric (a study's best is that of its feasible trials)
CAPACITY_METRICS = (names.CAPACITY, names.CAPACITY_PER_GPU, names.TARGET_PER_GPU)
LABELS = {
    "fast_trials": "Fast-cluster trials / {budget}",
    "consistency": "Post-hit consistency",
    "best_latency_ms": "Best latency (ms)",
    "best_goodput_tok_s": "Best goodput (tok/s)",
    "best_capacity_rps": "Best capacity (req/s)",
    "best_capacity_per_gpu_rps": "Best capacity per GPU (req/s)",
    "best_target_per_gpu_rps": "Best target rate per GPU needed (req/s)",
    "feasible_trials": "Feasible trials",
    "crash_waste_pct": "Crash waste (%)",
}


MIN_STUDIES = 3  # fewer studies in a group: no test (a p-value from 2 seeds says nothing)


def study_stats(
    trials: pd.DataFrame,
    latency: str,
    threshold: float,
    worst_latency: float = math.nan,
    capacity: tuple[str, ...] = (),
) -> dict[str, float]:
    """Statistics of one study's trials (sorted by trial number).

    A study that found nothing feasible counts with what it delivered: zero goodput and
    ``capacity`` metrics (those a comparison's studies measured), the comparison's
    ``worst_latency``, no
    fast trials and zero consistency; it is never left out of the means and tests (that would
    flatter the optimizer failing more).
    """
    trials = trials.sort_values("trial")
    feasible = trials[trials["feasible"]]
    fast = (trials["feasible"] & (trials[latency] <= threshold)).to_numpy()
    hits = np.flatnonzero(fast)
    after = fast[hits[0] + 1 :] if hits.size else np.empty(0, dtype=bool)
    found = len(feasible) > 0
    return {
        "trials": float(len(trials)),
        "best_latency_ms": float(feasible[latency].min()) if found else worst_latency,
        "best_goodput_tok_s": float(feasible["goodput_tok_s"].max()) if found else 0.0,
        **{
            names.best(m): (float(feasible[m].max()) if found else 0.0)
            if m in capacity
            else math.nan
            for m in CAPACITY_METRICS
        },
        "feasible_trials": float(len(feasible)),
        "crashes": float(trials["crashed"].sum()),
        "crash_waste_pct": 100.0 * float(trials["crashed"].mean()) if len(trials) else 0.0,
        "fast_trials": float(fast.sum()),
        "first_hit": float(hits[0]) if hits.size else math.nan,
        "consistency": float(after.mean()) if after.size else (math.nan if hits.size else 0.0),
    }


def compare(per_study: pd.DataFrame, baseline: str, candidate: str) -> dict[str, Any]:
    """Mann-Whitney U of ``candidate`` against ``baseline`` on every statistic in BETTER."""
    tests: dict[str, Any] = {}
    for stat, direction in BETTER.items():
        a = per_study.loc[per_study["optimizer"] == candidate, stat].dropna().to_numpy()
        b = per_study.loc[per_study["optimizer"] == baseline, stat].dropna().to_numpy()
        if len(a) == 0 or len(b) == 0:
            continue
        if min(len(a), len(b)) < MIN_STUDIES:
            tests[stat] = {"skipped": f"fewer than {MIN_STUDIES} studies in a group",
                           "n_candidate": len(a), "n_baseline": len(b)}  # fmt: skip
            continue
        two = mannwhitneyu(a, b, alternative="two-sided")
        one = mannwhitneyu(a, b, alternative=direction)
        tests[stat] = {
            "u": float(two.statistic),
            "p_two_sided": float(two.pvalue),
            "p_one_sided": float(one.pvalue),
            "alternative": direction,
            "n_candidate": len(a),
            "n_baseline": len(b),
        }
    return tests


def summarize(
    trials: pd.DataFrame,
    baseline: str,
    candidate: str,
    latency: str = "e2el_p50_ms",
    delta: float = 0.10,
) -> dict[str, Any]:
    """The whole comparison as a JSON-ready dict (see the module docstring)."""
    feasible = trials[trials["feasible"]]
    best = float(feasible[latency].min()) if len(feasible) else math.nan
    threshold = (1.0 + delta) * best
    worst = float(trials[latency].max()) if trials[latency].notna().any() else math.nan
    capacity = tuple(m for m in CAPACITY_METRICS if m in trials and bool(trials[m].notna().any()))
    if names.TARGET_PER_GPU in capacity:  # searched only up to the target: ties, not a ranking
        capacity = tuple(m for m in capacity if m != names.CAPACITY)
    rows = []
    for (optimizer, seed, name), group in trials.groupby(["optimizer", "seed", "study_name"]):
        rows.append(
            {
                "optimizer": optimizer,
                "seed": int(seed),
                "study_name": name,
                **study_stats(group, latency, threshold, worst, capacity),
            }
        )
    per_study = pd.DataFrame(rows)
    optimizers = {}
    for optimizer, group in per_study.groupby("optimizer"):
        optimizers[optimizer] = {
            stat: {
                "mean": _nan_none(group[stat].mean()),
                "sd": _nan_none(group[stat].std(ddof=1)) if len(group) > 1 else None,
                "n": int(group[stat].notna().sum()),
            }
            for stat in (*BETTER, "crashes", "first_hit", "trials")
        }
    tests = compare(per_study, baseline, candidate)
    sd = {
        o: optimizers.get(o, {}).get("best_latency_ms", {}).get("sd")
        for o in (baseline, candidate)
    }
    low, high = sd[baseline], sd[candidate]
    ratio = low / high if low and high else None
    return {
        "latency_metric": latency,
        "delta": delta,
        "best_latency_ms": best,
        "fast_threshold_ms": threshold,
        "baseline": baseline,
        "candidate": candidate,
        "studies": [{k: _nan_none(v) for k, v in r.items()} for r in rows],
        "optimizers": optimizers,
        "tests": tests,
        "sd_ratio_best_latency": ratio,
    }


def format_table(summary: dict[str, Any], published: bool = False) -> str:
    """The seed README's table: mean ± sd per optimizer, Mann-Whitney p, and the paper's."""
    base, cand = summary["baseline"], summary["candidate"]
    opt = summary["optimizers"]
    budget = int(opt[cand]["trials"]["mean"]) if cand in opt else 0
    head = (
        f"| Metric | {base} (n = {opt.get(base, {}).get('trials', {}).get('n', 0)}) | "
        f"{cand} (n = {opt.get(cand, {}).get('trials', {}).get('n', 0)}) | Mann-Whitney p "
        "(sided) |"
    )
    lines = [
        head + (" Published (random / tba-tpe, p) |" if published else ""),
        "|---|---|---|---|" + ("---|" if published else ""),
    ]
    for stat in BETTER:
        if not any(opt.get(o, {}).get(stat, {}).get("n") for o in (base, cand)):
            continue  # e.g. capacity in a goodput comparison
        row = (
            f"| {LABELS[stat].format(budget=budget)} | {_pm(opt.get(base), stat)} | "
            f"{_pm(opt.get(cand), stat)} | {_p(summary['tests'].get(stat), stat)} |"
        )
        if published:
            pub = PUBLISHED.get(stat)
            row += (
                f" {pub[0]:.2f} ± {pub[1]:.2f} / {pub[2]:.2f} ± {pub[3]:.2f}, p={pub[4]:.3f} |"
                if pub
                else " — |"
            )
        lines.append(row)
    feas = {
        o: sum(int(s["feasible_trials"]) for s in summary["studies"] if s["optimizer"] == o)
        for o in (base, cand)
    }
    total = {
        o: sum(int(s["trials"]) for s in summary["studies"] if s["optimizer"] == o)
        for o in (base, cand)
    }
    lines.append(
        f"| Feasibility | {feas[base]} / {total[base]} | {feas[cand]} / {total[cand]} "
        "| — |" + (" 75 / 75 each |" if published else "")
    )
    if any("skipped" in t for t in summary["tests"].values()):
        lines.append(
            f"\nNo Mann-Whitney test: fewer than {MIN_STUDIES} studies (seeds) in a group."
        )
    lines.append(
        "Studies with nothing feasible count as zero goodput and capacity and the worst "
        "latency seen; none is left out."
    )
    ratio = summary["sd_ratio_best_latency"]
    lines.append(
        f"\nCross-seed sd of best latency, {base} / {cand}: "
        + (f"{ratio:.2f}x" if ratio else "n/a")
        + (" (published: 4.42x)" if published else "")
    )
    lines.append(
        f"Fast cluster: {summary['latency_metric']} within "
        f"{100 * summary['delta']:.0f}% of the best ({summary['best_latency_ms']:.1f} "
        f"ms), i.e. <= {summary['fast_threshold_ms']:.1f} ms."
    )
    return "\n".join(lines)


def _p(test: dict[str, Any] | None, stat: str) -> str:
    """The p-value as the seed reports it, labelled: one-sided for the consistency claims."""
    if not test:
        return "—"
    if "skipped" in test:
        return f"— (n < {MIN_STUDIES})"
    if stat in ("fast_trials", "consistency"):
        return f"{test['p_one_sided']:.3f} (1-sided)"
    return f"{test['p_two_sided']:.3f} (2-sided)"


def _pm(stats: dict[str, Any] | None, stat: str) -> str:
    if not stats or stats[stat]["mean"] is None:
        return "—"
    sd = stats[stat]["sd"]
    return (
        f"{stats[stat]['mean']:.2f} ± {sd:.2f}" if sd is not None else f"{stats[stat]['mean']:.2f}"
    )


def _nan_none(value: Any) -> Any:
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return None
    return float(value) if isinstance(value, np.floating) else value


def run(
    args: argparse.Namespace, summary_out: Path | None, trials: pd.DataFrame | None = None
) -> dict[str, Any]:
    """Load (unless given the trials), summarise, print the table, write summary.json."""
    if trials is None:
        _, trials = load_comparison(args.comparison, args.experiment, args.tracking_uri)
    summary = summarize(trials, args.baseline, args.candidate, args.latency_metric, args.delta)
    print(format_table(summary, published=args.published))
    if summary_out is not None:
        summary_out.parent.mkdir(parents=True, exist_ok=True)
        summary_out.write_text(json.dumps(summary, indent=1))
        print(f"wrote {summary_out}")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--summary-out", default="summary.json")
    args = parser.parse_args(argv)
    try:
        run(args, Path(args.summary_out))
    except LookupError as e:
        print(f"compute_multiseed_stats: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
