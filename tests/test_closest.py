"""A study that found nothing feasible says which trial came closest, and what it missed."""

from __future__ import annotations

from pathlib import Path

from sloguard.result import TrialRecord, TrialResult
from sloguard.slo_contract import SloContract, shortfalls
from sloguard.tune import closest_line
from tests.conftest import run_cli


def _record(number: int, **metrics: float) -> TrialRecord:
    result = TrialResult({"max_num_seqs": 8 * (number + 1)}, metrics=dict(metrics))
    return TrialRecord(number=number, params={}, result=result)


def test_the_worst_miss_comes_first() -> None:
    slo = SloContract(ttft_ms=500, itl_ms=100)
    missed = shortfalls({"ttft_p99_ms": 520.0, "itl_p99_ms": 300.0}, slo)
    assert [m[0] for m in missed] == ["ITL p99 (ms)", "TTFT p99 (ms)"]
    classes = {"attainment": 0.8, "class/chat/attainment": 0.8}
    assert shortfalls(classes, slo) == [("attainment", 0.8, 0.9)]
    assert shortfalls({"attainment": 0.5, "ttft_p99_ms": 400.0, "itl_p99_ms": 20.0}, slo) == []


def test_the_closest_trial_is_the_one_least_off() -> None:
    slo = SloContract(ttft_ms=500, itl_ms=100)
    line = closest_line(
        [
            _record(0, ttft_p99_ms=900.0, itl_p99_ms=50.0),
            _record(1, ttft_p99_ms=550.0, itl_p99_ms=90.0),
        ],
        slo,
    )
    assert line.startswith("  closest: trial #1, which missed TTFT p99 (ms) 550 vs 500 (+10%)")
    assert "max_num_seqs=16" in line


def test_a_study_with_nothing_feasible_prints_it(study_env, tmp_path: Path) -> None:
    proc = run_cli(
        ["-m", "sloguard.tune", "budget=3", "workload=smoke", "progress=false", "slo.ttft_ms=1"],
        cwd=tmp_path,
        env=study_env,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-3].endswith("no feasible configuration in 3 trials")
    assert lines[-2].startswith("  closest: trial #") and "TTFT p99 (ms)" in lines[-2]
