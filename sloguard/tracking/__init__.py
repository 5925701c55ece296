"""MLflow as the mirror of a study's storage: a study run, one nested run per trial."""

from __future__ import annotations

from sloguard.tracking import names
from sloguard.tracking._best import SERVE_TAG, best_configurations
from sloguard.tracking._tracker import (
    DEFAULT_TRACKING_URI,
    ProgressPoint,
    StudyTracker,
    TrialRun,
    check_tracking_uri,
    flatten,
    is_terminated,
    mlflow_client,
    resolve_tracking_uri,
    sqlite_setup_lock,
    trial_metrics,
    trial_tags,
)

__all__ = [
    "DEFAULT_TRACKING_URI",
    "SERVE_TAG",
    "ProgressPoint",
    "StudyTracker",
    "TrialRun",
    "best_configurations",
    "check_tracking_uri",
    "flatten",
    "is_terminated",
    "mlflow_client",
    "names",
    "resolve_tracking_uri",
    "sqlite_setup_lock",
    "trial_metrics",
    "trial_tags",
]
