import subprocess
import sys
from pathlib import Path

from sloguard.study import run_study
from tests.conftest import REPO


def test_trials_table_reads_a_study_back(compose, study_env, tmp_path: Path) -> None:
    outcome = run_study(compose("workload=smoke", "progress=false", "budget=4", "study_name=tbl"))
    out = tmp_path / "t.csv"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "analysis" / "trials_table.py"),
            "--study",
            "tbl",
            "--output",
            str(out),
        ],
        cwd=tmp_path,
        text=True,
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("study tbl: 4 trials")
    rows = out.read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("trial,quantization,max_num_seqs")
    first = outcome.records[0].result
    assert rows[1].split(",")[2] == str(first.config["max_num_seqs"])
    missing = subprocess.run(
        [sys.executable, str(REPO / "analysis" / "trials_table.py"), "--study", "nope"],
        cwd=tmp_path,
        text=True,
        capture_output=True,
        check=False,
    )
    assert missing.returncode == 2 and "no study 'nope'" in missing.stderr
