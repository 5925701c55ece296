"""The tuning suite refuses bad arguments in one line, before it runs or writes anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "tuning_suite.py"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--budget", "5"], "--budget 5: give at least 10"),
        (["--seeds", "0"], "--seeds 0: give at least 1"),
        (["--workers", "0"], "--workers 0: give at least 1"),
        (["--variant", "tpe:optimizer=tba"], "'tpe:optimizer=tba': tpe is taken"),
        (["--variant", "x:optimizer.t0=hot"], "--variant 'x:optimizer.t0=hot'"),
        (["--optimizers", "random", "tpe"], "--recommended tba-tpe: not run"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(tmp_path, args, says) -> None:
    output = tmp_path / "suite.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert says in proc.stderr.strip().splitlines()[-1] and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
