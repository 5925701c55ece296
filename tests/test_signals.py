from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from sloguard import signals
from sloguard.exceptions import Interrupted
from tests.study_tests.conftest import TUNE, finish, load_study, mlflow_runs, records


def test_a_signal_inside_deferred_waits_for_the_block_to_end() -> None:
    steps = []
    with signals.handled(), pytest.raises(Interrupted) as info:
        with signals.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
            steps.append("the block went on")
        steps.append("not reached")
    assert steps == ["the block went on"] and info.value.signum == signal.SIGTERM


def test_a_held_signal_is_raised_where_the_caller_can_clean_up() -> None:
    with signals.handled():
        with signals.deferred(hold=True):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
        with pytest.raises(Interrupted) as info:
            signals.raise_pending()
        signals.raise_pending()  # nothing held any more
    assert info.value.signum == signal.SIGINT


def test_an_error_in_flight_wins_over_a_held_signal() -> None:
    with signals.handled(), pytest.raises(KeyError), signals.deferred():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
        raise KeyError("first")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_signal_stops_a_study_that_resumes(sig: signal.Signals, study_env, tmp_path) -> None:
    """Started by a script with SIGINT ignored, as `cmd &` in a script does: still stoppable."""
    args = ["budget=6", "workload=smoke", "backend.startup_sleep_s=0.5", "progress=false"]
    tuner = subprocess.Popen(
        [*TUNE, *args, "study_name=stopped"], cwd=tmp_path, env={**os.environ, **study_env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    journal = tmp_path / "studies" / "stopped" / "journal.log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and tuner.poll() is None:
        if journal.exists() and journal.read_bytes().count(b"sloguard:result") >= 1:
            break
        time.sleep(0.05)
    tuner.send_signal(sig)
    _, err = tuner.communicate(timeout=120)
    assert tuner.returncode == 128 + sig, err
    lines = [line for line in err.splitlines() if "mlflow.store.db.utils" not in line]
    assert "Traceback" not in err and len(lines) == 1, err
    assert f"{sig.name}: study stopped stopped" in lines[0] and "run the same command" in lines[0]
    study = mlflow_runs(study_env["MLFLOW_TRACKING_URI"], "stopped")
    assert list(study[study["tags.sloguard.role"] == "study"]["status"]) == ["KILLED"]
    done = len(records(load_study(tmp_path / "studies", "stopped")))
    assert 1 <= done < 6
    finish(subprocess.Popen(
        [*TUNE, *args, "study_name=stopped"], cwd=tmp_path, env={**os.environ, **study_env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    ))  # fmt: skip
    assert [r.number for r in records(load_study(tmp_path / "studies", "stopped"))] == list(
        range(6)
    )
    study = mlflow_runs(study_env["MLFLOW_TRACKING_URI"], "stopped")
    assert list(study[study["tags.sloguard.role"] == "study"]["status"]) == ["FINISHED"]
