from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sloguard.backends.vllm import ServerProcess, free_port, group_members, port_is_free
from sloguard.backends.vllm._server import terminate_raises
from sloguard.exceptions import Interrupted
from sloguard.signals import exit_status

# A "server" whose tree looks like vLLM's: the leader serves /health, a child ignores SIGTERM.
_SERVER = textwrap.dedent(
    """
    import http.server, signal, subprocess, sys
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"])
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers()
        def log_message(self, *a):
            pass
    print("child", child.pid, flush=True)
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
    """
)


def _start(tmp_path: Path, code: str, *args: str) -> ServerProcess:
    port = free_port()
    argv = [sys.executable, "-c", code, str(port), *args]
    return ServerProcess(argv, dict(os.environ), tmp_path / "server.log", "127.0.0.1", port)


def test_ready_then_teardown_escalates_and_leaves_nothing(tmp_path: Path) -> None:
    server = _start(tmp_path, _SERVER)
    assert server.wait_ready(20) == "ready"
    assert os.getpgid(server.proc.pid) == server.pgid != os.getpgid(0)
    assert len(group_members(server.pgid)) >= 2 and not port_is_free(server.port)
    taken = server.stop(grace_s=1.0)
    assert taken >= 1.0  # the child ignored SIGTERM: SIGKILL after the grace period
    assert group_members(server.pgid) == [] and port_is_free(server.port)
    assert server.proc.returncode is not None
    assert "# sloguard launch:" in server.log_text() and "child" in server.log_text()


def test_a_server_that_exits_is_reported(tmp_path: Path) -> None:
    server = _start(tmp_path, "import sys; print('bad flag'); sys.exit(3)")
    assert server.wait_ready(20) == "exited"
    assert server.exit_code == 3
    server.stop(1.0)
    assert group_members(server.pgid) == []


def test_a_server_that_never_listens_times_out(tmp_path: Path) -> None:
    server = _start(tmp_path, "import time; time.sleep(300)")
    start = time.perf_counter()
    assert server.wait_ready(1.0) == "timeout"
    assert 0.9 <= time.perf_counter() - start < 5
    assert server.stop(5.0) < 5.0  # plain SIGTERM suffices here
    assert group_members(server.pgid) == []


_SLOW_START = textwrap.dedent(
    """
    import http.server, sys, time
    for step in range(int(sys.argv[2])):  # compiling: a line every 0.3 s, then serve
        print("compiling graph", step, flush=True)
        time.sleep(0.3)
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers()
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
    """
)


def test_a_start_whose_log_keeps_growing_gets_more_time(tmp_path: Path) -> None:
    server = _start(tmp_path, _SLOW_START, "10")  # ready after ~3 s
    try:
        assert server.wait_ready(1.0, stall_s=1.0, max_s=20.0) == "ready"
        assert time.perf_counter() - server.started > 2.5
    finally:
        server.stop(5.0)


def test_a_start_still_progressing_at_the_cap_is_cut_short(tmp_path: Path) -> None:
    server = _start(tmp_path, _SLOW_START, "1000")
    try:
        assert server.wait_ready(1.0, stall_s=1.0, max_s=2.5) == "still_progressing"
        assert 2.4 <= time.perf_counter() - server.started < 6
    finally:
        server.stop(5.0)


def test_a_start_whose_log_went_silent_times_out_after_the_stall(tmp_path: Path) -> None:
    server = _start(tmp_path, "print('loading', flush=True); import time; time.sleep(300)")
    try:
        assert server.wait_ready(1.0, stall_s=1.5, max_s=30.0) == "timeout"
        assert 1.4 <= time.perf_counter() - server.started < 6
    finally:
        server.stop(5.0)


def test_server_dies_with_a_sigkilled_tuner(tmp_path: Path) -> None:
    tuner = textwrap.dedent(
        f"""
        import os, sys, time
        from pathlib import Path
        from sloguard.backends.vllm import ServerProcess, free_port
        port = free_port()
        argv = [sys.executable, "-c", "import time; time.sleep(300)"]
        s = ServerProcess(argv, dict(os.environ), Path({str(tmp_path / "s.log")!r}),
                          "127.0.0.1", port)
        print(s.pgid, flush=True)
        time.sleep(300)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", tuner], stdout=subprocess.PIPE, text=True)
    pgid = int(proc.stdout.readline())
    assert group_members(pgid)
    proc.kill()  # no teardown code runs: PR_SET_PDEATHSIG must end the server
    proc.wait()
    deadline = time.time() + 10
    while group_members(pgid) and time.time() < deadline:
        time.sleep(0.1)
    assert group_members(pgid) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_raises_while_a_server_is_owned(sig: signal.Signals) -> None:
    previous = signal.getsignal(sig)
    with pytest.raises(Interrupted) as info, terminate_raises():
        os.kill(os.getpid(), sig)
        time.sleep(1)
    assert info.value.signum == sig and exit_status(info.value) == 128 + sig
    assert signal.getsignal(sig) == previous


def test_port_helpers() -> None:
    port = free_port()
    assert port_is_free(port)
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        assert not port_is_free(port)


def test_a_relaunch_reads_only_its_own_part_of_the_log(tmp_path: Path) -> None:
    first = _start(tmp_path, "print('ValueError: from the killed attempt')")
    first.wait_ready(20)
    first.stop(1.0)
    again = _start(tmp_path, "print('second attempt')")
    again.wait_ready(20)
    again.stop(1.0)
    assert "killed attempt" not in again.log_text() and "second attempt" in again.log_text()
    assert "killed attempt" in (tmp_path / "server.log").read_text()  # the file keeps both
