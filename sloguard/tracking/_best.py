"""Finished studies' best configurations, read back from MLflow."""

from __future__ import annotations

from sloguard.tracking import names
from sloguard.tracking._tracker import mlflow_client, resolve_tracking_uri

SERVE_TAG = f"{names.BEST_PREFIX}vllm_serve"  # the study run's `vllm serve ...` line


def best_configurations(
    tracking_uri: str | None, study: str | None = None, comparison: str | None = None
) -> list[tuple[str, str, str]]:
    """(study name, ``vllm serve`` line, ``best_config.yaml`` artifact URI), best goodput first.

    Raises:
        LookupError: No finished study with a best configuration matches.
    """
    client = mlflow_client(resolve_tracking_uri(tracking_uri))
    wanted = [f"tags.`{names.ROLE}` = '{names.STUDY_ROLE}'"]
    if study is not None:
        wanted.append(f"tags.{names.STUDY_NAME} = '{study}'")
    if comparison is not None:
        wanted.append(f"tags.{names.COMPARISON} = '{comparison}'")
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, " and ".join(wanted), max_results=10_000)
    found = [r for r in runs if SERVE_TAG in r.data.tags]
    if not found:
        what = f"study {study!r}" if study is not None else f"comparison {comparison!r}"
        raise LookupError(f"no finished {what} with a feasible best configuration in MLflow")
    found.sort(key=lambda r: -r.data.metrics.get(names.best(names.GOODPUT), 0.0))
    return [
        (
            r.data.tags.get(names.STUDY_NAME, r.info.run_id),
            r.data.tags[SERVE_TAG],
            f"{r.info.artifact_uri}/best_config.yaml",
        )
        for r in found
    ]
