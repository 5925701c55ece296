"""Read a study's trials back out of MLflow as a table.

Usage:
    python analysis/trials_table.py --experiment sloguard [--study NAME] [--output trials.csv]

Without ``--study`` the newest study of the experiment is read. Prints one row per trial
(knobs, SLO percentiles, goodput, crash category) and optionally writes it as CSV.
"""

from __future__ import annotations

import argparse
import sys

import mlflow
import pandas as pd

from sloguard.space import KNOB_NAMES
from sloguard.tracking import ROLE_TAG, TRIAL_NUMBER_TAG, resolve_tracking_uri

COLUMNS = ("ttft_p99_ms", "itl_p99_ms", "goodput_tok_s", "attainment")


def load_trials(
    experiment: str, study: str | None = None, tracking_uri: str | None = None
) -> pd.DataFrame:
    """One row per trial of ``study`` (default: the newest study in ``experiment``)."""
    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    runs = mlflow.search_runs(experiment_names=[experiment])
    if runs.empty:
        raise LookupError(f"experiment {experiment!r} has no runs")
    studies = runs[runs[f"tags.{ROLE_TAG}"] == "study"]
    if study is not None:
        studies = studies[studies["tags.study_name"] == study]
    if studies.empty:
        raise LookupError(f"no study {study!r} in experiment {experiment!r}")
    parent = studies.sort_values("start_time").iloc[-1]
    trials = runs[runs["tags.mlflow.parentRunId"] == parent["run_id"]].copy()
    trials["trial"] = trials[f"tags.{TRIAL_NUMBER_TAG}"].astype(int)
    table = pd.DataFrame({"trial": trials["trial"]})
    for knob in KNOB_NAMES:
        table[knob] = trials[f"params.{knob}"]
    for metric in COLUMNS:
        table[metric] = trials.get(f"metrics.{metric}")
    table["feasible"] = trials["tags.feasible"] == "true"
    table["crash"] = trials["tags.crash_category"]
    table.attrs["study"] = parent["tags.study_name"]
    return table.sort_values("trial").reset_index(drop=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="sloguard")
    parser.add_argument("--study", default=None, help="study name (default: the newest)")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--output", default=None, help="write the table as CSV here")
    args = parser.parse_args(argv)
    try:
        table = load_trials(args.experiment, args.study, args.tracking_uri)
    except LookupError as e:
        print(f"trials_table: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"study {table.attrs['study']}: {len(table)} trials")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    if args.output:
        table.to_csv(args.output, index=False)


if __name__ == "__main__":
    main()
