"""Figures of a comparison (or one study) from MLflow, as PNG files.

Usage:
    python analysis/plot_comparison.py --comparison paper-repro --output figures/
    python analysis/plot_comparison.py --experiment sloguard --study NAME --output figures/

Writes ``best_so_far.png`` (best feasible goodput and latency vs trial, median and min-max band
over seeds), ``fast_hits.png`` (share of seeds in the fast cluster at each trial),
``feasibility_map.png`` (outcome of every trial over max_num_seqs x max_num_batched_tokens) and
``knob_scatter.png`` (goodput against each knob).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import NullFormatter

from analysis._mlflow import load_comparison
from sloguard.space import KNOB_NAMES

OUTCOME_STYLE = {
    "feasible": ("tab:green", "o"),
    "SLO miss": ("tab:orange", "s"),
    "crash": ("tab:red", "x"),
}


def best_so_far(trials: pd.DataFrame, column: str, better: str) -> pd.DataFrame:
    """Per study, the best feasible value up to each trial (NaN before the first feasible)."""
    frames = []
    for _, group in trials.groupby("run_id"):
        group = group.sort_values("trial")
        values = group[column].where(group["feasible"])
        # cummax/cummin leave NaN where a trial was infeasible: carry the best forward
        running = (values.cummax() if better == "max" else values.cummin()).ffill()
        frames.append(group.assign(best=running.to_numpy()))
    return pd.concat(frames)


def plot_best_so_far(trials: pd.DataFrame, latency: str, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (column, better, label) in zip(
        axes,
        (("goodput_tok_s", "max", "best goodput (tok/s)"), (latency, "min", f"best {latency}")),
        strict=True,
    ):
        curves = best_so_far(trials, column, better)
        for optimizer, group in curves.groupby("optimizer"):
            # a seed with nothing feasible yet has delivered nothing: 0 goodput, an unbounded
            # latency; so the median is over every seed at every trial and never goes back
            worst = 0.0 if better == "max" else np.inf
            filled = group.assign(best=group["best"].fillna(worst))
            stats = filled.groupby("trial")["best"].agg(["median", "min", "max"])
            stats = stats.replace(np.inf, np.nan)  # not drawn until most seeds have one
            line = ax.plot(stats.index, stats["median"], marker=".", label=optimizer)[0]
            ax.fill_between(
                stats.index, stats["min"], stats["max"], alpha=0.2, color=line.get_color()
            )
        ax.set_xlabel("trial (numbered from 0, as in MLflow)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("Best feasible configuration so far (median, min-max over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_fast_hits(trials: pd.DataFrame, latency: str, delta: float, path: Path) -> None:
    best = trials.loc[trials["feasible"], latency].min()
    fast = trials.assign(fast=trials["feasible"] & (trials[latency] <= (1 + delta) * best))
    fig, ax = plt.subplots(figsize=(7, 4))
    for optimizer, group in fast.groupby("optimizer"):
        share = group.groupby("trial")["fast"].mean()
        ax.plot(share.index, share.to_numpy(), marker="o", label=optimizer)
    ax.set_xlabel("trial (numbered from 0, as in MLflow)")
    ax.set_ylabel("share of seeds in the fast cluster")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(f"Fast cluster: {latency} within {100 * delta:.0f}% of {best:.1f} ms")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _outcome(trials: pd.DataFrame) -> pd.Series:
    return pd.Series(
        np.where(trials["crashed"], "crash", np.where(trials["feasible"], "feasible", "SLO miss")),
        index=trials.index,
    )


def plot_feasibility_map(trials: pd.DataFrame, path: Path) -> None:
    outcome = _outcome(trials)
    fig, ax = plt.subplots(figsize=(7, 5))
    for name, (color, marker) in OUTCOME_STYLE.items():
        subset = trials[outcome == name]
        ax.scatter(
            subset["max_num_seqs"].astype(float),
            subset["max_num_batched_tokens"].astype(float),
            c=color,
            marker=marker,
            label=f"{name} ({len(subset)})",
            alpha=0.7,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("max_num_seqs")
    ax.set_ylabel("max_num_batched_tokens")
    ax.set_title("Outcome of every trial")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_knob_scatter(trials: pd.DataFrame, path: Path) -> None:
    outcome = _outcome(trials)
    fig, axes = plt.subplots(2, 4, figsize=(15, 7))
    rng = np.random.default_rng(0)
    for ax, knob in zip(axes.flat, KNOB_NAMES, strict=True):
        values = trials[knob]
        numeric = pd.to_numeric(values, errors="coerce")
        if numeric.notna().all():
            x, ticks = numeric.to_numpy(), None
        else:
            ticks = sorted(values.dropna().unique())
            x = values.map({v: i for i, v in enumerate(ticks)}).to_numpy(dtype=float)
            x = x + rng.uniform(-0.15, 0.15, len(x))
        for name, (color, marker) in OUTCOME_STYLE.items():
            mask = (outcome == name).to_numpy()
            ax.scatter(
                x[mask],
                trials.loc[mask, "goodput_tok_s"].fillna(0.0),
                c=color,
                marker=marker,
                alpha=0.6,
                s=18,
            )
        if ticks is not None:
            ax.set_xticks(range(len(ticks)), ticks)
        elif knob in ("max_num_seqs", "max_num_batched_tokens", "max_model_len"):
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(knob, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("goodput (tok/s)")
    axes[1, 0].set_ylabel("goodput (tok/s)")
    fig.suptitle("Goodput against each knob (green feasible, orange SLO miss, red crash)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_all(
    trials: pd.DataFrame, output: Path, latency: str = "e2el_p50_ms", delta: float = 0.10
) -> list[Path]:
    """Write every figure into ``output``; return their paths."""
    output.mkdir(parents=True, exist_ok=True)
    paths = [
        output / n
        for n in ("best_so_far.png", "fast_hits.png", "feasibility_map.png", "knob_scatter.png")
    ]
    plot_best_so_far(trials, latency, paths[0])
    plot_fast_hits(trials, latency, delta, paths[1])
    plot_feasibility_map(trials, paths[2])
    plot_knob_scatter(trials, paths[3])
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comparison", default=None)
    parser.add_argument("--experiment", default=None)
    parser.add_argument("--study", default=None, help="plot this one study only")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--latency-metric", default="e2el_p50_ms")
    parser.add_argument("--delta", type=float, default=0.10)
    parser.add_argument("--output", default="figures")
    args = parser.parse_args(argv)
    try:
        _, trials = load_comparison(args.comparison, args.experiment, args.tracking_uri)
        if args.study is not None:
            trials = trials[trials["study_name"] == args.study]
            if trials.empty:
                raise LookupError(f"no study {args.study!r}")
    except LookupError as e:
        print(f"plot_comparison: error: {e}", file=sys.stderr)
        sys.exit(2)
    for path in plot_all(trials, Path(args.output), args.latency_metric, args.delta):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
