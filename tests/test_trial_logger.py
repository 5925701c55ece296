import json
from pathlib import Path

import pytest

from sloguard.crash_classifier import CrashCategory, CrashInfo
from sloguard.result import TrialResult
from sloguard.trial_logger import TrialLog, TrialRecord


def _record(n: int, crash: bool = False) -> TrialRecord:
    result = TrialResult(
        {"max_num_seqs": n + 1},
        metrics={"goodput_tok_s": 10.0 * n, "ttft_p99_ms": float("nan")},
        crash=CrashInfo(CrashCategory.OOM, "kv", "No available memory") if crash else None,
        feasible=not crash,
        utility=None if crash else 10.0 * n,
        server={"kv_cache_tokens": 5},
    )
    return TrialRecord(n, {"max_num_seqs": n + 1}, result, "tpe", ["a -> b"], 0.5)


def test_round_trip(tmp_path: Path) -> None:
    log = TrialLog.create(tmp_path / "s", {"study_name": "s", "config_hash": "h"})
    log.append(_record(0))
    log.append(_record(1, crash=True))
    again = TrialLog.open(tmp_path / "s")
    assert again.header["study_name"] == "s" and again.header["type"] == "header"
    # compare serialised forms: NaN survives the round trip but NaN != NaN
    assert [json.dumps(r.to_dict()) for r in again.records] == [
        json.dumps(r.to_dict()) for r in log.records
    ]
    assert again.records[1].result.crash.category is CrashCategory.OOM
    assert again.records[0].result.metrics["goodput_tok_s"] == 0.0


def test_a_torn_last_line_is_dropped_and_the_log_continues(tmp_path: Path) -> None:
    log = TrialLog.create(tmp_path / "s", {"study_name": "s"})
    log.append(_record(0))
    with open(log.path, "a", encoding="utf-8") as f:  # killed in the middle of a write
        f.write(json.dumps(_record(1).to_dict())[:40])
    again = TrialLog.open(tmp_path / "s")
    assert len(again.records) == 1
    again.append(_record(1))
    assert [r.number for r in TrialLog.open(tmp_path / "s").records] == [0, 1]


def test_numbers_must_follow_each_other(tmp_path: Path) -> None:
    log = TrialLog.create(tmp_path / "s", {"study_name": "s"})
    with pytest.raises(ValueError, match="trial 3 appended after 0 trials"):
        log.append(_record(3))
    with pytest.raises(FileExistsError):
        TrialLog.create(tmp_path / "s", {"study_name": "s"})
