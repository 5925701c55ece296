"""Studies and their trials from MLflow, as pandas tables."""

from __future__ import annotations

import mlflow
import pandas as pd

from sloguard.space import KNOB_NAMES
from sloguard.tracking import ROLE_TAG, TRIAL_NUMBER_TAG, resolve_tracking_uri

METRICS = (
    "goodput_tok_s",
    "ttft_p99_ms",
    "itl_p99_ms",
    "e2el_p50_ms",
    "e2el_mean_ms",
    "attainment",
    "output_throughput_tok_s",
    "capacity_rps",
)


def load_comparison(
    comparison: str | None = None, experiment: str | None = None, tracking_uri: str | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The studies of a comparison (by tag, else every study of ``experiment``) and their trials.

    Returns:
        ``studies``: one row per study (run_id, study_name, optimizer, seed, start_time).
        ``trials``: one row per trial (study run_id, optimizer, seed, trial, feasible, crashed,
        crash category, the knobs, and the metrics in :data:`METRICS`).

    Raises:
        LookupError: When nothing matches.
    """
    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    if experiment is not None:
        runs = mlflow.search_runs(experiment_names=[experiment])
    else:
        runs = mlflow.search_runs(search_all_experiments=True)
    if runs.empty or f"tags.{ROLE_TAG}" not in runs:
        raise LookupError(f"no SLO-Guard studies in {experiment or 'any experiment'}")
    studies = runs[runs[f"tags.{ROLE_TAG}"] == "study"]
    if comparison is not None:
        if "tags.comparison" not in studies:
            raise LookupError(f"no study is tagged comparison={comparison!r}")
        studies = studies[studies["tags.comparison"] == comparison]
    if studies.empty:
        raise LookupError(f"no studies for comparison={comparison!r} experiment={experiment!r}")
    studies = (
        pd.DataFrame(
            {
                "run_id": studies["run_id"],
                "study_name": studies["tags.study_name"],
                "optimizer": studies["tags.optimizer"],
                "seed": studies["tags.seed"].astype(int),
                "start_time": studies["start_time"],
            }
        )
        .sort_values(["optimizer", "seed"])
        .reset_index(drop=True)
    )
    raw = runs[runs["tags.mlflow.parentRunId"].isin(set(studies["run_id"]))]
    trials = pd.DataFrame(
        {
            "run_id": raw["tags.mlflow.parentRunId"],
            "trial": raw[f"tags.{TRIAL_NUMBER_TAG}"].astype(int),
            "feasible": raw["tags.feasible"] == "true",
            "crash": raw["tags.crash_category"],
        }
    )
    trials["crashed"] = trials["crash"] != "none"
    for knob in KNOB_NAMES:
        trials[knob] = raw.get(f"params.{knob}")
    for metric in METRICS:
        column = raw.get(f"metrics.{metric}")
        trials[metric] = column.astype(float) if column is not None else float("nan")
    trials = trials.merge(studies[["run_id", "optimizer", "seed", "study_name"]], on="run_id")
    return studies, trials.sort_values(["optimizer", "seed", "trial"]).reset_index(drop=True)
