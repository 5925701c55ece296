"""Studies in an Optuna storage: one source of truth for any number of workers and machines.

A study is an Optuna study (a journal file by default, PostgreSQL across machines); workers
claim its trials, propose through the study's optimizer rebuilt from the stored trials, store
results, and mirror them to MLflow, which a reconciler keeps equal to the store.
"""

from __future__ import annotations

from sloguard.study._mirror import MirrorReport, reconcile
from sloguard.study._proposer import Proposer
from sloguard.study._runner import (
    StudyIncomplete,
    StudyOutcome,
    finish_study,
    make_worker,
    plan_workers,
    reconcile_study,
    run_study,
)
from sloguard.study._storage import JOURNAL_NAME, StorageSpec
from sloguard.study._study import (
    StudyHandle,
    attach_study,
    check_study_name,
    config_hash,
    open_study,
)
from sloguard.study._summary import best_trial, export_trials, study_records, summarize_study
from sloguard.study._trials import Slots
from sloguard.study._worker import StudyStopped, Worker, WorkerSettings

__all__ = [
    "JOURNAL_NAME",
    "MirrorReport",
    "Proposer",
    "Slots",
    "StorageSpec",
    "StudyHandle",
    "StudyIncomplete",
    "StudyOutcome",
    "StudyStopped",
    "Worker",
    "WorkerSettings",
    "attach_study",
    "best_trial",
    "check_study_name",
    "config_hash",
    "export_trials",
    "finish_study",
    "make_worker",
    "open_study",
    "plan_workers",
    "reconcile",
    "reconcile_study",
    "run_study",
    "study_records",
    "summarize_study",
]
