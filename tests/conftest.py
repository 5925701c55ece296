from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from omegaconf import DictConfig

from sloguard.tune import compose_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def compose() -> Callable[..., DictConfig]:
    """Compose the real config tree with overrides (validated)."""

    def _compose(*overrides: str) -> DictConfig:
        return compose_config(list(overrides))

    return _compose


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
