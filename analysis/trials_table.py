"""Read a study's trials back out of MLflow as a table.

Usage:
    python analysis/trials_table.py --experiment sloguard [--study NAME] [--output trials.csv]

Without ``--study`` the newest study of the experiment is read. Prints one row per trial
(knobs, SLO percentiles, goodput, crash category) and optionally writes it as CSV.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from analysis._mlflow import load_comparison
from sloguard.space import KNOB_NAMES

COLUMNS = (
    "trial",
    *KNOB_NAMES,
    "ttft_p99_ms",
    "itl_p99_ms",
    "goodput_tok_s",
    "attainment",
    "feasible",
    "crash",
)


def load_trials(
    experiment: str, study: str | None = None, tracking_uri: str | None = None
) -> pd.DataFrame:
    """One row per trial of ``study`` (default: the newest study in ``experiment``)."""
    studies, trials = load_comparison(experiment=experiment, tracking_uri=tracking_uri)
    if study is None:
        study = studies.sort_values("start_time")["study_name"].iloc[-1]
    elif study not in set(studies["study_name"]):
        raise LookupError(f"no study {study!r} in experiment {experiment!r}")
    table = trials[trials["study_name"] == study][list(COLUMNS)].reset_index(drop=True)
    table.attrs["study"] = study
    return table


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
