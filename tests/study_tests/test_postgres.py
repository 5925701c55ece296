"""Studies across machines: a real PostgreSQL storage and a real `mlflow server`.

Two "machines" are two commands with their own folders that share only the storage URL, the
study name and the tracking server, as nodes of a cluster would.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from sloguard.study._trials import INFRA_ATTR, WORKER_ATTR, has_result
from tests.conftest import run_cli
from tests.study_tests.conftest import (
    FAST,
    assert_store_equals_mlflow,
    finish,
    load_study,
    mlflow_runs,
    start,
)


def _descends_from(pid: int, ancestor: int) -> bool:
    """Whether ``ancestor`` started ``pid`` (workers fork from the command's fork server)."""
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat[stat.rfind(")") + 2 :].split()[1])
        if pid == ancestor:
            return True
    return False


@pytest.mark.slow
@pytest.mark.postgres
def test_two_machines_join_one_study_and_survive_a_killed_worker(
    study_env, tmp_path: Path, postgres_url: str, mlflow_server: str
) -> None:
    env = {**study_env, "MLFLOW_TRACKING_URI": mlflow_server}
    common = ["optimizer=tba-tpe", "budget=9", "study_name=multi", f"storage={postgres_url}"]
    nodes = []
    for node, extra in (("a", ["workers=2"]), ("b", [])):
        folder = tmp_path / node
        folder.mkdir()
        node_env = {**env, "SLOGUARD_STUDY_DIR": str(folder / "studies")}
        nodes.append(start([*common, *extra, "backend.startup_sleep_s=0.8"], folder, node_env))
    victim = None
    deadline = time.monotonic() + 180
    while victim is None and time.monotonic() < deadline:
        time.sleep(0.3)
        try:
            study = load_study(tmp_path, "multi", postgres_url)
        except KeyError:
            continue  # not created yet
        running = study.get_trials(states=(TrialState.RUNNING,))
        done = sum(has_result(t) for t in study.get_trials())
        of_a = [
            t
            for t in running
            if WORKER_ATTR in t.user_attrs
            and _descends_from(t.user_attrs[WORKER_ATTR]["pid"], nodes[0].pid)
        ]
        if done >= 2 and of_a:
            victim = of_a[0]
    assert victim is not None, "no worker of node a was seen mid-trial"
    os.kill(victim.user_attrs[WORKER_ATTR]["pid"], signal.SIGKILL)
    for proc in nodes:
        finish(proc)
    study = load_study(tmp_path, "multi", postgres_url)
    assert_store_equals_mlflow(study, env, "multi", 9)
    pids = {t.user_attrs[WORKER_ATTR]["pid"] for t in study.get_trials() if has_result(t)}
    assert len(pids) >= 2, "both machines ran trials"
    killed = study.get_trials()[victim.number]
    assert killed.state == TrialState.FAIL and "died" in killed.user_attrs[INFRA_ATTR]

    # a third command with the same name and another configuration: refused, nothing written
    before = len(mlflow_runs(mlflow_server))
    proc = run_cli(
        ["-m", "sloguard.tune", *FAST, *common, "workload.num_requests=30"], tmp_path, env
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "sloguard: error: study_name='multi' was run with another configuration (differs in: "
        "workload.num_requests); choose another study_name or run it with its own configuration"
    ]
    assert len(mlflow_runs(mlflow_server)) == before
    assert len(load_study(tmp_path, "multi", postgres_url).get_trials()) == len(study.get_trials())
