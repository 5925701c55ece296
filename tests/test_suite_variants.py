"""The suite-variants script recovers the stored studies' choices exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
STORED = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "tuning_suite.json"


@pytest.fixture
def suite_variants(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import suite_variants

    yield suite_variants
    sys.modules.pop("suite_variants", None)


def test_stored_regrets_come_back_unchanged(suite_variants) -> None:
    stored = json.loads(STORED.read_text())
    chosen = suite_variants.stored_choices(stored)
    scores = suite_variants.rescore(stored, chosen, [10, 15, 30])
    feasible = {p for p, r in stored["problems"].items() if r["best_known"] > 0}
    assert set(scores) == feasible and len(feasible) >= 12
    for problem, per in scores.items():
        assert set(per) == set(stored["problems"][problem]["scores"])
        for name, seeds in per.items():
            for seed, score in seeds.items():
                want = stored["problems"][problem]["scores"][name][str(seed)]["regret"]
                assert score["regret"] == pytest.approx({int(c): r for c, r in want.items()})


def test_a_variant_above_the_best_known_raises_it(suite_variants) -> None:
    stored = json.loads(STORED.read_text())
    chosen = suite_variants.stored_choices(stored)
    best = stored["problems"]["paper"]["best_known"]
    chosen["paper", "better", 0, 30] = 2 * best
    scores = suite_variants.rescore(stored, chosen, [30])
    assert scores["paper"]["better"][0]["regret"][30] == 0.0
    # the stored best is now half the best known: 50% regret or more
    assert all(s["regret"][30] >= 50.0 - 1e-9 for s in scores["paper"]["tba-tpe"].values())


STORED_ARG = ["--against", str(STORED)]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--against", "nowhere.json", "--variant", "x:optimizer=tba"], "not a tuning_suite.py"),
        ([*STORED_ARG, "--variant", "tba:optimizer=tba"], "'tba:optimizer=tba': tba is taken"),
        ([*STORED_ARG, "--variant", "x:optimizer=nope"], "--variant 'x:optimizer=nope'"),
        ([*STORED_ARG, "--variant", "x:optimizer=tba", "--control", "no"], "--control no: not"),
        ([*STORED_ARG, "--variant", "x:optimizer=tba", "--workers", "0"], "--workers 0: give"),
        ([*STORED_ARG, "--variant", "x"], "--variant 'x': give NAME:OVERRIDES"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(args, says) -> None:
    script = str(BENCHMARKS / "suite_variants.py")
    proc = subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert says in proc.stderr.strip().splitlines()[-1] and "Traceback" not in proc.stderr
