"""Studies and their trials from MLflow, as pandas tables."""

from __future__ import annotations

import mlflow
import pandas as pd

from sloguard.space import KNOB_NAMES
from sloguard.tracking import names, resolve_tracking_uri

METRICS = (
    names.GOODPUT,
    names.TTFT_P99,
    names.ITL_P99,
    names.E2EL_P50,
    names.E2EL_MEAN,
    names.ATTAINMENT,
    names.OUTPUT_THROUGHPUT,
    names.CAPACITY,
    names.CAPACITY_PER_GPU,
    names.TARGET_PER_GPU,
)


def _tag(name: str) -> str:
    return f"tags.{name}"


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
    if runs.empty or _tag(names.ROLE) not in runs:
        raise LookupError(f"no SLO-Guard studies in {experiment or 'any experiment'}")
    studies = runs[runs[_tag(names.ROLE)] == names.STUDY_ROLE]
    if comparison is not None:
        if _tag(names.COMPARISON) not in studies:
            raise LookupError(f"no study is tagged comparison={comparison!r}")
        studies = studies[studies[_tag(names.COMPARISON)] == comparison]
    if studies.empty:
        raise LookupError(f"no studies for comparison={comparison!r} experiment={experiment!r}")
    studies = (
        pd.DataFrame(
            {
                "run_id": studies["run_id"],
                "study_name": studies[_tag(names.STUDY_NAME)],
                "optimizer": studies[_tag(names.OPTIMIZER)],
                "seed": studies[_tag(names.SEED)].astype(int),
                "start_time": studies["start_time"],
            }
        )
        .sort_values(["optimizer", "seed"])
        .reset_index(drop=True)
    )
    raw = runs[runs[_tag(names.PARENT_RUN)].isin(set(studies["run_id"]))]
    trials = pd.DataFrame(
        {
            "run_id": raw[_tag(names.PARENT_RUN)],
            "trial": raw[_tag(names.TRIAL_NUMBER)].astype(int),
            "feasible": raw[_tag(names.FEASIBLE)] == "true",
            "crash": raw[_tag(names.CRASH_CATEGORY)],
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
