"""Where a study lives: an Optuna storage, named by a URL or by default a journal file.

``storage=`` takes what Optuna's storages take: ``sqlite:///...``, ``postgresql://...`` (and other
SQLAlchemy URLs) for :class:`~optuna.storages.RDBStorage`, ``redis://...`` for a journal in
Redis, or a file path for a journal file. The default is a journal file in the study's folder.

Optuna's journal file backend fsyncs every append. Two gaps are closed here: the new file's
directory entry is fsync'ed too, and a torn last line (a writer killed mid-write) is cut off
before the next append instead of corrupting the line written after it. Heartbeats, which Optuna
implements for RDB storages only, are given to journals through the same interface.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import (
    BaseJournalBackend,
    JournalFileBackend,
    JournalFileSymlinkLock,
)
from optuna.trial import FrozenTrial, TrialState

from sloguard.exceptions import NO_SPACE_ERRNOS, ConfigError, DiskFull, StoreDamaged
from sloguard.redaction import mask
from sloguard.tracking import sqlite_setup_lock

if TYPE_CHECKING:
    from collections.abc import Generator, Iterator

SEQ_KEY = "sloguard_seq"  # a journal record's line number, for finding lost records
JOURNAL_NAME = "journal.log"  # the default storage: <study_dir>/<study_name>/journal.log
HEARTBEAT_ATTR = "sloguard:heartbeat"  # a journal trial's last heartbeat (seconds since epoch)
_RDB_SCHEMES = ("sqlite", "postgresql", "mysql", "oracle", "mssql")
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
_LOCK_GRACE_S = 10  # a journal lock older than this was left by a killed writer

StaleCallback = Callable[[optuna.Study, FrozenTrial], None]


@dataclass(frozen=True)
class StorageSpec:
    """A study's storage as configured.

    Args:
        url: ``storage=`` as given; ``None`` for the default journal in the study's folder.
    """

    url: str | None = None

    def __post_init__(self) -> None:
        if self.url is not None and not self.url.strip():
            raise ConfigError(
                "storage='' is invalid; leave it unset for the default journal file, or give a "
                "URL (sqlite:///FILE, postgresql://USER@HOST/DB, redis://HOST:PORT) or a path"
            )
        if self.url is not None and re.fullmatch(r"sqlite(\+\w+)?://(/(:memory:)?)?", self.url):
            raise ConfigError(
                f"storage={self.url!r} is an in-memory database, gone when the process ends; "
                "give a file: sqlite:///FILE"
            )
        if self.url is not None and self.kind == "journal":  # (kind checks a URL's scheme)
            folder = Path(self.url).parent
            if not folder.is_dir():
                raise ConfigError(
                    f"storage={self.url!r}: the folder {str(folder)!r} does not exist"
                )

    @property
    def kind(self) -> str:
        """``journal`` (a file), ``redis`` (a journal in Redis) or ``rdb``."""
        if self.url is None:
            return "journal"
        match = _URL.match(self.url)
        if match is None:
            return "journal"  # a plain path: a journal file
        scheme = match["scheme"].lower()
        if scheme in ("redis", "rediss"):
            return "redis"
        if scheme.split("+")[0] in _RDB_SCHEMES:
            return "rdb"
        raise ConfigError(
            f"storage={mask(self.url)!r} has an unknown scheme {scheme!r}; use sqlite:///FILE, "
            "postgresql://USER@HOST/DB, redis://HOST:PORT or a journal file path"
        )

    @property
    def shared(self) -> bool:
        """Whether studies of other names can live in the same storage (a URL, not a folder)."""
        return self.url is not None

    def journal_path(self, directory: Path) -> Path:
        """The journal file of a study whose folder is ``directory``."""
        return Path(self.url) if self.url is not None else directory / JOURNAL_NAME

    def exists(self, directory: Path) -> bool:
        """Whether opening the storage reads something that is there (nothing is created)."""
        return self.kind != "journal" or self.journal_path(directory).exists()

    def describe(self, directory: Path) -> str:
        """The storage as a user would pass it to optuna-dashboard (password masked)."""
        return str(self.journal_path(directory)) if self.kind == "journal" else mask(self.url)

    def check_reachable(self) -> None:
        """Connect to a database or Redis storage once (a journal file needs nothing).

        Raises:
            ConfigError: It cannot be opened.
        """
        if self.kind != "journal":
            self.open(Path("."))

    def open(
        self,
        directory: Path,
        *,
        heartbeat_interval: int = 10,
        grace_period: int = 60,
        on_stale: StaleCallback | None = None,
    ) -> BaseStorage:
        """Open (or create) the storage.

        Raises:
            ConfigError: The URL is malformed, its server unreachable, a driver missing.
        """
        kind = self.kind
        try:
            if kind == "journal":
                path = self.journal_path(directory)
                backend: BaseJournalBackend = DurableJournalFileBackend(str(path))
                return HeartbeatJournalStorage(backend, heartbeat_interval, grace_period, on_stale)
            assert self.url is not None
            if kind == "redis":
                from optuna.storages.journal import JournalRedisBackend

                backend = JournalRedisBackend(self.url)
                return HeartbeatJournalStorage(backend, heartbeat_interval, grace_period, on_stale)
            with sqlite_setup_lock(self.url), warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                rdb = RDBStorage(
                    self.url,
                    engine_kwargs=_engine_kwargs(self.url),
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=on_stale,
                )
            # the study's own handle: Optuna wraps RDB storages in a cache, and every read and
            # write must go through the same object
            return optuna.storages.get_storage(rdb)
        except ConfigError:
            raise
        except ImportError as e:
            raise ConfigError(
                f"storage={mask(self.url)!r} needs a database driver that is not installed "
                f"({e.name or e}); install it (PostgreSQL: psycopg, Redis: redis)"
            ) from None
        except Exception as e:  # noqa: BLE001 - SQLAlchemy, redis and OS errors alike
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(
                f"storage={mask(self.url or str(directory))!r} cannot be opened: {first}"
            ) from None


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}  # several workers write the same file
    return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}


class DurableJournalFileBackend(JournalFileBackend):
    """Optuna's journal file, made durable and checked.

    - The new file's directory entry is fsync'ed; every append is fsync'ed (as Optuna does).
    - A line torn by a killed writer is cut before the next append; a complete last record that
      only lacks its newline gets it (Optuna would skip it, and the next append would glue onto
      it).
    - Each record carries its line number (``SEQ_KEY``), so a deleted, repeated or reordered
      record is found on reading, like a line that is not JSON: :class:`StoreDamaged` names the
      file and the line.
    - An append that finds the disk full is undone and raises :class:`DiskFull`.

    Args:
        file_path: The journal file (created if missing).
    """

    def __init__(self, file_path: str) -> None:
        new = not os.path.exists(file_path)
        self._file_lock = JournalFileSymlinkLock(file_path, grace_period=_LOCK_GRACE_S)
        super().__init__(file_path, lock_obj=self._file_lock)
        self._known = (0, 0)  # (byte offset, complete lines before it)
        if new:
            _fsync_dir(os.path.dirname(os.path.abspath(file_path)))
        else:
            with _locked(self._file_lock), open(self._file_path, "r+b") as f:
                _fix_tail(f)
                if not _last_line_is_json(f):  # Optuna skips a bad last line without a word
                    raise StoreDamaged(self._damage(self._count_lines(f), "not a journal record"))

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        number = log_number_from
        try:
            for log in super().read_logs(log_number_from):
                if log.get(SEQ_KEY, number) != number:
                    raise StoreDamaged(
                        self._damage(
                            number + 1, "records before it are missing, repeated or out of order"
                        )
                    )
                number += 1
                yield log
        except StoreDamaged:
            raise
        except ValueError:  # JSON and UTF-8 decoding errors alike
            raise StoreDamaged(self._damage(number + 1, "not a journal record")) from None

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        with _locked(self._file_lock), open(self._file_path, "r+b") as f:
            _fix_tail(f)
            first = self._count_lines(f)
            text = "".join(
                json.dumps({**log, SEQ_KEY: first + i}, separators=(",", ":")) + "\n"
                for i, log in enumerate(logs)
            ).encode()
            end = f.seek(0, os.SEEK_END)
            try:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            except OSError as e:
                if e.errno not in NO_SPACE_ERRNOS:
                    raise
                f.truncate(end)  # all of the append or none of it
                raise DiskFull(e.errno, f"no space left for {self._file_path}") from None
            self._known = (end + len(text), first + len(logs))

    def _count_lines(self, f: Any) -> int:
        """Complete lines in the file (counted on from the last count)."""
        offset, lines = self._known
        if f.seek(0, os.SEEK_END) < offset:
            offset, lines = 0, 0  # the file was replaced
        f.seek(offset)
        return lines + f.read().count(b"\n")

    def _damage(self, line: int, what: str) -> str:
        return (
            f"study storage {self._file_path} is damaged at line {line} ({what}); restore the "
            "file from a backup, or start anew with another study_name (the damaged study "
            "cannot be resumed)"
        )


def _fix_tail(f: Any) -> None:
    """End the file with a newline: a complete last record gets one, a torn one is cut."""
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        return
    f.seek(size - 1)
    if f.read(1) == b"\n":
        return
    cut = _last_newline(f, size)
    if not _is_json(f, cut, size):
        f.truncate(cut)
        return
    f.write(b"\n")
    f.flush()
    os.fsync(f.fileno())


def _last_line_is_json(f: Any) -> bool:
    size = f.seek(0, os.SEEK_END)
    return size == 0 or _is_json(f, _last_newline(f, size - 1), size)


def _is_json(f: Any, start: int, end: int) -> bool:
    """Whether the bytes from ``start`` to ``end`` are one JSON value."""
    f.seek(start)
    try:
        json.loads(f.read(end - start))
    except ValueError:
        return False
    return True


def _last_newline(f: Any, size: int) -> int:
    """The offset just after the last newline (0 if there is none)."""
    end = size
    while end > 0:
        start = max(0, end - 4096)
        f.seek(start)
        cut = f.read(end - start).rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        end = start
    return 0


@contextlib.contextmanager
def _locked(lock: JournalFileSymlinkLock) -> Iterator[None]:
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """A journal storage with Optuna's heartbeat interface (which Optuna gives RDB storages).

    A heartbeat is a trial system attribute with the writer's clock; a running trial whose last
    heartbeat (or start, before the first) is older than ``grace_period`` seconds is stale;
    :func:`optuna.storages.fail_stale_trials` fails it and calls the stale-trial callback.

    Args:
        backend: The journal backend (a file or Redis).
        heartbeat_interval: Seconds between a running trial's heartbeats.
        grace_period: Seconds without a heartbeat after which a trial is stale.
        heartbeat_stale_trial_callback: Called with each trial failed for being stale.
    """

    def __init__(
        self,
        backend: BaseJournalBackend,
        heartbeat_interval: int = 10,
        grace_period: int = 60,
        heartbeat_stale_trial_callback: StaleCallback | None = None,
    ) -> None:
        super().__init__(backend)
        self._heartbeat_interval = heartbeat_interval
        self._grace_period = grace_period
        self._on_stale = heartbeat_stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        return [
            t._trial_id
            for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
            if now - last_heartbeat(t) > self._grace_period
        ]

    def get_heartbeat_interval(self) -> int:
        return self._heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> StaleCallback | None:
        return self._on_stale


def last_heartbeat(trial: FrozenTrial) -> float:
    """A journal trial's last sign of life (its last heartbeat, else its start)."""
    beat = trial.system_attrs.get(HEARTBEAT_ATTR)
    if beat is not None:
        return float(beat)
    start = trial.datetime_start
    return start.timestamp() if start is not None else time.time()


def iter_journal_studies(study_dir: Path) -> Iterator[tuple[Path, str]]:
    """``(folder, study name)`` of every default-journal study under ``study_dir``."""
    if not study_dir.is_dir():
        return
    for path in sorted(study_dir.glob(f"*/{JOURNAL_NAME}")):
        yield path.parent, path.parent.name
