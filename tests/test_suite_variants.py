"""The suite-variants script recovers the stored studies' choices exactly."""

from __future__ import annotations

import json
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
    for problem, per in scores.items():
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
