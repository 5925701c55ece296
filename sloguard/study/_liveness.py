"""Which process runs a trial, and whether it is still alive.

A worker stamps each trial it claims with its identity: host, a machine key (boot id and PID
namespace, so two containers sharing a host name are told apart), PID and the process's start
time (so a reused PID is not taken for the worker). On the same machine a dead worker is
known at once; elsewhere only its missing heartbeats tell.
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from typing import Any


@functools.cache
def machine_key() -> str:
    """What identifies this machine's process table: boot id and PID namespace."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pid_ns = os.stat("/proc/self/ns/pid").st_ino
        return f"{boot}/{pid_ns}"
    except OSError:
        return socket.gethostname()


def _start_ticks(pid: int) -> int | None:
    """A live process's start time in clock ticks since boot; ``None`` if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def identity(pid: int | None = None) -> dict[str, Any]:
    """This process's identity (or ``pid``'s on this machine), as stored on a trial."""
    pid = os.getpid() if pid is None else pid
    return {
        "host": socket.gethostname(),
        "machine": machine_key(),
        "pid": pid,
        "start": _start_ticks(pid),
    }


def is_alive(worker: dict[str, Any]) -> bool | None:
    """Whether the worker is alive; ``None`` when it runs on another machine (ask heartbeats)."""
    if worker.get("machine") != machine_key():
        return None
    start = _start_ticks(int(worker["pid"]))
    return start is not None and start == worker.get("start")


def is_self(worker: dict[str, Any]) -> bool:
    """Whether ``worker`` is this process."""
    return worker.get("machine") == machine_key() and worker.get("pid") == os.getpid()
