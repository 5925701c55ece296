"""What a study found: its trials as records, the best one, its curves and summary."""

from __future__ import annotations

import json
import math
import os
from typing import TYPE_CHECKING, Any

from sloguard.study._trials import finished_at, finished_trials, record_of
from sloguard.tracking import ProgressPoint, names

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from optuna.trial import FrozenTrial

    from sloguard.result import TrialRecord


def study_records(trials: Sequence[FrozenTrial]) -> list[TrialRecord]:
    """The finished trials' records, by trial number."""
    return sorted((record_of(t) for t in finished_trials(trials)), key=lambda r: r.number)


def best_trial(records: Sequence[TrialRecord]) -> TrialRecord | None:
    """The feasible trial with the highest utility (earliest on ties), or ``None``."""
    feasible = [r for r in records if r.result.feasible and r.result.utility is not None]
    return max(feasible, key=lambda r: (r.result.utility, -r.number), default=None)


def summarize_study(records: Sequence[TrialRecord]) -> dict[str, Any]:
    """Study-level figures: best goodput and latency, crashes, crash waste, feasibility."""
    crashes = sum(1 for r in records if r.result.crash)
    best = best_trial(records)
    summary: dict[str, Any] = {
        names.NUM_TRIALS: len(records),
        names.CRASHES: crashes,
        "crash_waste_pct": 100.0 * crashes / len(records) if records else 0.0,
        names.FEASIBLE_TRIALS: sum(1 for r in records if r.result.feasible),
    }
    if best is not None:
        metrics = best.result.metrics
        summary.update(
            best_trial=best.number,
            **{
                names.best(key): metrics.get(key, math.nan)
                for key in (
                    names.GOODPUT,
                    names.TTFT_P99,
                    names.ITL_P99,
                    names.E2EL_P50,
                    names.ATTAINMENT,
                    names.CAPACITY,
                    names.CAPACITY_PER_GPU,
                    names.GPUS,
                    names.TARGET_PER_GPU,
                    names.GPUS_NEEDED,
                    names.REPLICAS_NEEDED,
                )
            },
            best_config=best.result.config,
        )
    return summary


def progress_points(trials: Sequence[FrozenTrial]) -> list[ProgressPoint]:
    """The study's curves at each trial number whose predecessors have all finished."""
    by_number = {record_of(t).number: t for t in finished_trials(trials)}
    points, best, crashes, feasible, stamp = [], None, 0, 0, 0.0
    step = 0
    while step in by_number:
        trial = by_number[step]
        result = record_of(trial).result
        crashes += result.crash is not None
        feasible += result.feasible
        if result.feasible and result.utility is not None:
            best = result.utility if best is None else max(best, result.utility)
        stamp = max(stamp, finished_at(trial))
        points.append(ProgressPoint(step, best, crashes, feasible, int(stamp * 1000)))
        step += 1
    return points


def export_trials(trials: Sequence[FrozenTrial], path: Path) -> Path:
    """Write every finished trial as one JSON line (atomically), by trial number."""
    rows = [
        {**record_of(t).to_dict(), "optuna_trial": t.number, "state": t.state.name}
        for t in finished_trials(trials)
    ]
    rows.sort(key=lambda row: row["number"])
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, allow_nan=True, separators=(",", ":")) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
