"""Workers and their GPUs; bad study settings fail with one line and write nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from sloguard.exceptions import ConfigError
from sloguard.study import plan_workers
from sloguard.tune import check_overrides
from tests.conftest import run_cli
from tests.study_tests.conftest import FAST


def test_each_worker_gets_its_own_gpus(compose, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    pairs = compose("backend=vllm", "workers=auto", "hardware.gpus_per_trial=2")
    assert plan_workers(pairs) == ["0,1", "2,3"]
    assert plan_workers(compose("backend=vllm", "workers=3")) == ["0", "1", "2"]
    with pytest.raises(
        ConfigError, match=r"^workers=3 x hardware.gpus_per_trial=2 needs 6 GPUs; this machine "
        r"has 4 \(0,1,2,3\)$"
    ):  # fmt: skip
        plan_workers(compose("backend=vllm", "workers=3", "hardware.gpus_per_trial=2"))
    assert plan_workers(compose("workers=4")) == [None] * 4  # the simulator needs no GPU
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert plan_workers(compose("backend=vllm", "workers=auto")) == [None]  # no GPU: one


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("workers=0", "workers=0 is invalid; it must be an integer >= 1 or 'auto'"),
        ("workers=two", "workers='two' is invalid; it must be an integer >= 1 or 'auto'"),
        (
            "grace_period=5",
            "grace_period=5 is invalid; it must be more than heartbeat_interval=10",
        ),
        ("storage=foo://x", "storage='foo://x' has an unknown scheme 'foo'; use sqlite:///FILE"),
        ("storage=sqlite://", "storage='sqlite://' is an in-memory database, gone when"),
        ("storage=/nowhere/j.log", "storage='/nowhere/j.log': the folder '/nowhere' does not"),
        ("study_name=../escape", "study_name='../escape' is invalid; use letters, digits"),
    ],
)
def test_bad_study_settings_are_one_clear_error(override, message) -> None:
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        check_overrides([override])


def test_an_unreachable_storage_is_one_line_and_writes_nothing(study_env, tmp_path: Path) -> None:
    proc = run_cli(
        ["-m", "sloguard.tune", *FAST, "storage=postgresql://me:pw@127.0.0.1:1/db"],
        tmp_path,
        study_env,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "sloguard: error: storage='postgresql://me:***@127.0.0.1:1/db' cannot be opened: "
    )
    assert "pw@" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no study folder, no MLflow store
