"""A throwaway PostgreSQL server on 127.0.0.1, for tests and benchmarks of shared studies.

Uses Debian's ``postgresql`` package (``initdb``, ``pg_ctl``). PostgreSQL refuses to run as root,
so as root the server runs as the ``postgres`` user, in a folder outside closed ones.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def postgres_program(name: str) -> str | None:
    """The path of a PostgreSQL server program (``initdb``, ``pg_ctl``), if installed."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return versions[-1] if versions else None


@contextmanager
def temporary_postgres() -> Iterator[str]:
    """Start a server in a temporary folder; yield its base URL; stop it and remove the folder.

    Raises:
        FileNotFoundError: PostgreSQL is not installed.
    """
    initdb, pg_ctl = postgres_program("initdb"), postgres_program("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise FileNotFoundError("PostgreSQL is not installed (apt-get install postgresql)")
    data = Path(tempfile.mkdtemp(prefix="sloguard-postgres-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])

    def run(*argv: str) -> None:
        subprocess.run([*as_user, *argv], check=True, capture_output=True, timeout=120)

    try:
        run(initdb, "-D", str(data / "db"), "-A", "trust", "-U", "postgres", "--no-sync")
        options = f"-k {data} -h 127.0.0.1 -p {port} -F"
        run(pg_ctl, "-D", str(data / "db"), "-o", options, "-l", str(data / "log"), "-w", "start")
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}"
        finally:
            run(pg_ctl, "-D", str(data / "db"), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(data, ignore_errors=True)


def create_database(server: str, name: str) -> str:
    """Create (or recreate) database ``name`` on ``server``; return its URL."""
    import psycopg

    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"
