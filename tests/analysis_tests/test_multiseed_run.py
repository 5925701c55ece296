"""A real small multiseed comparison on the sim, killed mid-way and resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analysis._mlflow import load_comparison
from tests.study_tests.conftest import load_study, records

ARGS = [
    "-m",
    "sloguard.tune",
    "-m",
    "seed=1,2",
    "optimizer=random,tba-tpe",
    "budget=8",
    "workload=smoke",
    "comparison=k",
    "resume=true",
    "progress=false",
]


@pytest.mark.slow
def test_multiseed_resumes_after_a_kill(study_env, tmp_path: Path) -> None:
    env = {**os.environ, **study_env}
    env.pop("MLFLOW_RUN_ID", None)
    proc = subprocess.Popen(
        [sys.executable, *ARGS],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    studies_dir = tmp_path / "studies"

    def finished() -> list[int]:  # finished trials per study, in the order studies began
        journals = sorted(studies_dir.glob("*/journal.log"), key=lambda p: p.stat().st_ctime)
        return [p.read_bytes().count(b"sloguard:result") for p in journals]

    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # kill once the second study is under way
            if studies_dir.exists() and len(done := finished()) >= 2 and done[-1] >= 3:
                break
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    partial = sum(len(records(load_study(studies_dir, p.name))) for p in studies_dir.iterdir())
    assert 8 < partial < 32, "the kill must land inside the comparison"

    done = subprocess.run(
        [sys.executable, *ARGS],
        cwd=tmp_path,
        env=env,
        text=True,
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "already complete" in done.stdout  # the first study was skipped
    studies, trials = load_comparison("k", tracking_uri=study_env["MLFLOW_TRACKING_URI"])
    assert len(studies) == 4  # no study run was duplicated by the resume
    assert sorted(zip(studies["optimizer"], studies["seed"], strict=True)) == [
        ("random", 1),
        ("random", 2),
        ("tba-tpe", 1),
        ("tba-tpe", 2),
    ]
    assert (
        trials.groupby("run_id")["trial"].apply(sorted).apply(list).tolist()
        == [list(range(8))] * 4
    )
