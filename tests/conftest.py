from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig

from sloguard.request_class import RequestClasses
from sloguard.testing.postgres import create_database, temporary_postgres
from sloguard.tune import compose_config
from sloguard.workload import Workload

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def compose() -> Callable[..., DictConfig]:
    """Compose the real config tree with overrides (validated)."""

    def _compose(*overrides: str) -> DictConfig:
        return compose_config(list(overrides))

    return _compose


def with_limits(
    workload: Workload, ttft_ms: Sequence[float], tpot_ms: Sequence[float] | None = None
) -> Workload:
    """``workload`` with a class per request: its own TTFT limit (and TPOT limit, 50 ms)."""
    n = len(workload)
    tpot = np.full(n, 50.0) if tpot_ms is None else np.asarray(tpot_ms, dtype=float)
    classes = RequestClasses(
        names=tuple(f"c{i}" for i in range(n)),
        class_ids=np.arange(n),
        sessions=np.arange(n),
        ttft_ms=np.asarray(ttft_ms, dtype=float),
        tpot_ms=tpot,
        answer_tpot_ms=tpot,
        answer_from=workload.output_lens.copy(),
    )
    return dataclasses.replace(workload, classes=classes)


@pytest.fixture
def study_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A private sqlite MLflow store, study dir and Hydra output dir under tmp_path."""
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "SLOGUARD_STUDY_DIR": str(tmp_path / "studies"),
        "SLOGUARD_OUTPUT_DIR": str(tmp_path / "outputs"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    return env


def run_cli(
    args: Sequence[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """Run a command of this project in a subprocess with the test's environment."""
    ambient = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
    full_env = {**ambient, **(env or {})}
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=full_env,
        text=True,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A real PostgreSQL server on 127.0.0.1 for the session; yields its base URL.

    Skipped without Debian's postgresql package unless SLOGUARD_REQUIRE_POSTGRES=1 (CI, whose
    `.ci/run` installs it), which makes a missing server a failure.
    """
    try:
        with temporary_postgres() as url:
            yield url
    except FileNotFoundError as e:
        if os.environ.get("SLOGUARD_REQUIRE_POSTGRES") == "1":
            pytest.fail(str(e))
        pytest.skip(str(e))


@pytest.fixture
def postgres_url(postgres_server: str, request: pytest.FixtureRequest) -> str:
    """A fresh database on the test server, for one test."""
    return create_database(postgres_server, f"t{abs(hash(request.node.nodeid)) % 10**8}")


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 (sqlite backend); yields its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
            "--default-artifact-root", str(tmp_path / "server-artifacts"), "--workers", "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("mlflow server did not start")
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


_REAL_SERVERS = {"vllm_python": "vllm", "postgres_server": "postgres", "postgres_url": "postgres"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by the real servers their fixtures start (``make test-fast`` leaves them out)."""
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            if fixture in _REAL_SERVERS:
                item.add_marker(_REAL_SERVERS[fixture])
