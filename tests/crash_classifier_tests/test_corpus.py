"""Every real failure excerpt from public vLLM issue threads lands in its category."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

from sloguard.crash_classifier import CrashCategory, classify

CORPUS = Path(__file__).parents[1] / "data" / "vllm_issue_excerpts"
ENTRIES = json.loads((CORPUS / "manifest.json").read_text())


def test_the_corpus_is_large_and_covers_every_category() -> None:
    assert len(ENTRIES) >= 60
    counts = collections.Counter(e["category"] for e in ENTRIES)
    assert set(counts) == {c.value for c in CrashCategory} - {"unknown"}
    assert min(counts.values()) >= 3
    assert all(e["source"].startswith("https://") or "#" in e["source"] for e in ENTRIES)


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["file"] for e in ENTRIES])
def test_excerpt(entry: dict) -> None:
    crash = classify((CORPUS / entry["file"]).read_text(errors="replace"), 1)
    assert (crash.category.value, crash.subcause) == (entry["category"], entry["subcause"])
    assert any(line[:60] in crash.evidence for line in entry["evidence"]), crash.evidence
