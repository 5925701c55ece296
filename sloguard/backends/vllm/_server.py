"""Own one vLLM server process group: launch, wait for /health, tear down, leave nothing behind.

The server runs in its own session (``setsid``), so a Ctrl-C in the tuner's terminal does not
reach it and its whole tree (API server, engine core, workers, resource tracker) shares one
process group that teardown signals: SIGTERM, then SIGKILL after a grace period. On Linux the
server also gets SIGTERM if the tuner dies without tearing down (``PR_SET_PDEATHSIG``). Nothing
is ever killed by name.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from sloguard import signals
from sloguard.redaction import redact_argv, redact_text

_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``port`` can be bound (no server and no listener left holding it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: ask the kernel whether the group exists at all
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) "
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def oom_kills() -> int | None:
    """The kernel's count of OOM-killer kills since boot (``None`` where it is not readable)."""
    try:
        for line in Path("/proc/vmstat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        pass
    return None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ServerProcess:
    """A launched server and its process group.

    Args:
        argv: The command, as a list (no shell).
        env: The full environment of the server.
        log_path: Where its stdout and stderr go.
        host: The address it listens on.
        port: Its port (``/health`` is polled there until it answers 200).
    """

    def __init__(
        self, argv: Sequence[str], env: dict[str, str], log_path: Path, host: str, port: int
    ) -> None:
        self.argv = list(argv)
        self.host = host
        self.port = port
        self.health_url = f"http://{host}:{port}/health"
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # a re-run trial (resumed study) appends: only this launch's part is read back
        self._log_offset = log_path.stat().st_size if log_path.exists() else 0
        with open(log_path, "ab") as log:
            devices = env.get("CUDA_VISIBLE_DEVICES")
            where = "" if devices is None else f" (CUDA_VISIBLE_DEVICES={devices})"
            shown = subprocess.list2cmdline(redact_argv(self.argv))
            log.write(f"# sloguard launch{where}: {shown}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        self.pgid = self.proc.pid  # setsid: the leader's pid is the group id
        self.started = time.perf_counter()

    @property
    def exit_code(self) -> int | None:
        return self.proc.poll()

    def log_text(self) -> str:
        """What this launch wrote to the log so far."""
        with open(self.log_path, "rb") as log:
            log.seek(self._log_offset)
            return log.read().decode("utf-8", errors="replace")

    def scrub_log(self, secrets: set[str]) -> None:
        """Replace every secret the server printed in its log by ``***`` (after it stopped)."""
        if not secrets:
            return
        text = self.log_path.read_bytes().decode("utf-8", errors="replace")
        clean = redact_text(text, secrets)
        if clean != text:
            tmp = self.log_path.with_name(self.log_path.name + ".tmp")
            tmp.write_text(clean, encoding="utf-8")
            os.replace(tmp, self.log_path)

    def healthy(self, timeout_s: float = 2.0) -> bool:
        """Whether /health answers 200 now."""
        try:
            with urllib.request.urlopen(self.health_url, timeout=timeout_s) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def wait_ready(
        self,
        timeout_s: float,
        *,
        stall_s: float | None = None,
        max_s: float | None = None,
        poll_s: float = 0.25,
    ) -> str:
        """Wait for /health: ``ready``, ``exited``, ``timeout`` or ``still_progressing``.

        Past ``timeout_s`` the server keeps getting time while its log keeps growing (loading,
        profiling, compiling, capturing graphs print as they go): it times out once the log has
        been silent for ``stall_s``, and a start still progressing at ``max_s`` is cut short as
        ``still_progressing`` (the host, not the configuration, is slow). Without ``stall_s`` the
        limit is ``timeout_s`` alone.
        """
        cap = timeout_s if stall_s is None else max(max_s or timeout_s, timeout_s)
        size, last_growth = self._log_size(), time.perf_counter()
        while True:
            if self.exit_code is not None:
                return "exited"
            now = time.perf_counter()
            elapsed = now - self.started
            budget = (timeout_s if elapsed < timeout_s else cap) - elapsed
            if self.healthy(timeout_s=min(2.0, max(budget, 0.1))):
                return "ready"
            now = time.perf_counter()
            if (grown := self._log_size()) != size:
                size, last_growth = grown, now
            elapsed = now - self.started
            if elapsed >= timeout_s:
                if stall_s is None or now - last_growth >= stall_s:
                    return "timeout"
                if elapsed >= cap:
                    return "still_progressing"
            time.sleep(poll_s)

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def stop(self, grace_s: float) -> float:
        """SIGTERM the group, SIGKILL what is left after ``grace_s``; returns seconds taken."""
        start = time.perf_counter()
        self._signal(signal.SIGTERM)
        deadline = start + grace_s
        while group_members(self.pgid) and time.perf_counter() < deadline:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=0.05)
        if group_members(self.pgid):
            self._signal(signal.SIGKILL)
            while group_members(self.pgid) and time.perf_counter() < deadline + 10:
                time.sleep(0.05)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        return time.perf_counter() - start

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, sig)


@contextlib.contextmanager
def terminate_raises() -> Iterator[None]:
    """While inside, SIGINT and SIGTERM raise Interrupted so teardown code still runs.

    Without this, SIGTERM would end the tuner at once and leave the server running. Only the
    main thread can install handlers; elsewhere it is a no-op.
    """
    with signals.handled():
        yield
