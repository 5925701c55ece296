"""``sloguard sync``: make MLflow equal the studies' storage after kills, crashes or restarts."""

from __future__ import annotations

import argparse
from pathlib import Path

import optuna

from sloguard.exceptions import ConfigError
from sloguard.redaction import mask
from sloguard.study._runner import finish_study
from sloguard.study._storage import StorageSpec, iter_journal_studies
from sloguard.study._study import CONFIG_ATTR, RUN_ATTR, StudyHandle
from sloguard.study._trials import requeue
from sloguard.tracking import StudyTracker, names, resolve_tracking_uri


def sync(args: argparse.Namespace) -> list[str]:
    """Reconcile the chosen studies; one line per study.

    Raises:
        ConfigError: A bad storage, or no study found.
    """
    spec = StorageSpec(args.storage)
    study_dir = Path(args.study_dir)
    if spec.shared:
        storage = spec.open(study_dir, grace_period=args.grace_period, on_stale=requeue)
        found = [(storage, s.study_name) for s in storage.get_all_studies()]
    else:
        found = [
            (spec.open(d, grace_period=args.grace_period, on_stale=requeue), name)
            for d, name in iter_journal_studies(study_dir)
        ]
    found = [(st, name) for st, name in found if args.study in (None, name)]
    if not found:
        where = mask(args.storage) if spec.shared else str(study_dir)
        raise ConfigError(f"--study={args.study!r}: no such study in {where}")
    uri = resolve_tracking_uri(args.tracking_uri)
    lines = []
    for storage, name in found:
        study = optuna.load_study(study_name=name, storage=storage)
        run_id = study.user_attrs.get(RUN_ATTR)
        if run_id is None:
            lines.append(f"study {name}: not a SLO-Guard study; skipped")
            continue
        try:
            tracker = StudyTracker.attach(uri, run_id)
        except LookupError:
            lines.append(f"study {name}: MLflow at {mask(uri)} has no run {run_id}; skipped")
            continue
        objective = study.user_attrs.get(CONFIG_ATTR, {}).get("objective", "goodput")
        handle = StudyHandle(
            name=name,
            directory=study_dir / name,
            spec=spec,
            storage=storage,
            study=study,
            tracker=tracker,
            objective=names.objective_metric(objective),
            grace_period=args.grace_period,
        )
        report = finish_study(handle)
        slots = handle.slots()
        lines.append(
            f"study {name}: {slots.finished}/{slots.budget} trials finished, {slots.running} "
            f"running; MLflow run {run_id}: {report}"
        )
    return lines
