"""Storages: URL forms, bad URLs, the journal's durability gaps closed, journal heartbeats."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from sloguard.exceptions import ConfigError, StoreDamaged
from sloguard.redaction import mask
from sloguard.study import StorageSpec
from sloguard.study._storage import HEARTBEAT_ATTR, HeartbeatJournalStorage
from tests.conftest import run_cli
from tests.study_tests.conftest import mlflow_runs


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        (None, "journal"),
        ("/tmp/study.log", "journal"),
        ("sqlite:///x.db", "rdb"),
        ("postgresql://u:p@127.0.0.1/db", "rdb"),
        ("postgresql+psycopg2://u@h/db", "rdb"),
        ("redis://127.0.0.1:6379", "redis"),
    ],
)
def test_storage_kinds(url, kind) -> None:
    assert StorageSpec(url).kind == kind


def test_an_unknown_scheme_is_one_line_naming_what_is_allowed() -> None:
    with pytest.raises(ConfigError, match=r"storage='foo://x' has an unknown scheme 'foo'; use"):
        StorageSpec("foo://x")


def test_passwords_are_masked() -> None:
    assert mask("postgresql://me:s3cret@host:5432/db") == "postgresql://me:***@host:5432/db"
    assert mask("postgresql://me@host/db") == "postgresql://me@host/db"
    with pytest.raises(ConfigError) as info:
        StorageSpec("postgresql://me:s3cret@127.0.0.1:1/db").open(Path("."))
    assert "s3cret" not in str(info.value) and "***" in str(info.value)
    assert "cannot be opened" in str(info.value)


def test_an_unwritable_sqlite_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be opened"):
        StorageSpec(f"sqlite:///{tmp_path}/missing/dir/x.db").open(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        StorageSpec(str(tmp_path / "missing" / "j.log"))


def test_a_torn_tail_is_cut_before_the_next_append(tmp_path: Path) -> None:
    storage = StorageSpec().open(tmp_path)
    study = optuna.create_study(study_name="s", storage=storage)
    study.enqueue_trial({"x": 1})
    journal = tmp_path / "journal.log"
    with open(journal, "ab") as f:  # a writer killed in the middle of a line
        f.write(b'{"op_code":5,"worker_id":"dead","trial_id":0,"use')
    again = optuna.load_study(study_name="s", storage=StorageSpec().open(tmp_path))
    again.set_user_attr("after", 1)  # this append repairs the tail first
    fresh = JournalStorage(JournalFileBackend(str(journal)))  # plain Optuna reads it whole
    assert optuna.load_study(study_name="s", storage=fresh).user_attrs == {"after": 1}
    assert journal.read_bytes().endswith(b"\n")


LOST = "records before it are missing, repeated or out of order"


def _journal_of_three_trials(folder: Path) -> Path:
    study = optuna.create_study(study_name="s", storage=StorageSpec().open(folder))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    return folder / "journal.log"


def test_a_complete_last_record_without_its_newline_is_kept(tmp_path: Path) -> None:
    journal = _journal_of_three_trials(tmp_path)
    journal.write_bytes(journal.read_bytes()[:-1])  # the last record's newline is lost
    study = optuna.load_study(study_name="s", storage=StorageSpec().open(tmp_path))
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 3
    study.set_user_attr("after", 1)
    assert optuna.load_study(study_name="s", storage=StorageSpec().open(tmp_path)).user_attrs


@pytest.mark.parametrize(
    ("damage", "line", "what"),
    [
        (lambda lines: [*lines[:4], b"garbage{\n", *lines[5:]], 5, "not a journal record"),
        (lambda lines: [*lines[:4], b"\x00\xff\xfe\n", *lines[4:]], 5, "not a journal record"),
        (lambda lines: lines[:4] + lines[5:], 5, LOST),
        (lambda lines: lines[1:], 1, LOST),
        (lambda lines: [*lines, lines[-1]], 0, LOST),
        (lambda lines: [*lines, b"not json\n"], 0, "not a journal record"),
    ],
    ids=["garbage-line", "binary-bytes", "deleted-record", "deleted-first", "repeated-last",
         "garbage-appended"],
)  # fmt: skip
def test_a_damaged_journal_is_one_line_naming_the_file_and_line(
    tmp_path: Path, damage, line: int, what: str
) -> None:
    """``line`` 0: the line after the last good one."""
    journal = _journal_of_three_trials(tmp_path)
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(damage(lines)))
    with pytest.raises(StoreDamaged) as info:
        optuna.load_study(study_name="s", storage=StorageSpec().open(tmp_path)).get_trials()
    message = str(info.value)
    assert f"{journal} is damaged at line {line or len(lines) + 1} ({what}" in message
    assert "\n" not in message


def test_a_damaged_study_is_refused_by_the_tuner_in_one_line(study_env, tmp_path: Path) -> None:
    args = ["-m", "sloguard.tune", "budget=2", "workload=smoke", "study_name=d", "progress=false"]
    assert run_cli(args, tmp_path, study_env).returncode == 0
    journal = tmp_path / "studies" / "d" / "journal.log"
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join([*lines[:3], b"}{\n", *lines[3:]]))
    done = run_cli([*args, "budget=3"], tmp_path, study_env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (
        f"sloguard: error: study storage {journal.resolve()} is damaged at line 4 (not a journal "
        "record); restore the file from a backup, or start anew with another study_name (the "
        "damaged study cannot be resumed)"
    )


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 1 MiB tmpfs: a real full disk (needs root, as on CI; skipped elsewhere)."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_the_study_in_one_line_and_it_resumes(
    study_env, tmp_path: Path, small_disk: Path
) -> None:
    env = {**study_env, "SLOGUARD_STUDY_DIR": str(small_disk / "studies")}
    args = ["-m", "sloguard.tune", "budget=40", "workload=smoke", "study_name=full"]
    filler = small_disk / "filler"
    filler.write_bytes(b"x" * (1024 - 48) * 1024)  # leaves room for a few trials only
    done = run_cli([*args, "progress=false"], tmp_path, env)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("sloguard: study full stopped: no space left writing ")
    assert last.endswith("free space, then resume it: run the same command again")
    stored = optuna.load_study(
        study_name="full", storage=StorageSpec().open(small_disk / "studies" / "full")
    )
    finished = len([t for t in stored.get_trials() if t.state.is_finished()])
    assert 0 < finished < 40
    filler.unlink()  # space again: the same command finishes the study
    again = run_cli([*args, "progress=false"], tmp_path, env)
    assert again.returncode == 0, again.stderr[-3000:]
    runs = mlflow_runs(study_env["MLFLOW_TRACKING_URI"], "full")
    assert (runs["tags.sloguard.role"] == "trial").sum() == 40


def test_plain_optuna_appending_after_a_torn_tail_corrupts_the_journal(tmp_path: Path) -> None:
    """The gap the durable backend closes, shown on Optuna's own backend."""
    journal = tmp_path / "j.log"
    storage = JournalStorage(JournalFileBackend(str(journal)))
    optuna.create_study(study_name="s", storage=storage)
    with open(journal, "ab") as f:
        f.write(b'{"op_code":5,"worker')
    study = optuna.load_study(study_name="s", storage=storage)
    study.set_user_attr("lost", 1)  # glued to the torn line: silently dropped
    assert optuna.load_study(study_name="s", storage=storage).user_attrs == {}
    with pytest.raises(ValueError):  # the bad line is now in the middle: unreadable
        study.set_user_attr("after", 2)


def test_journal_heartbeats_find_stale_trials(tmp_path: Path) -> None:
    stale: list[int] = []
    storage = HeartbeatJournalStorage(
        JournalFileBackend(str(tmp_path / "j.log")),
        heartbeat_interval=1,
        grace_period=2,
        heartbeat_stale_trial_callback=lambda study, trial: stale.append(trial.number),
    )
    study = optuna.create_study(study_name="s", storage=storage)
    alive, dead = study.ask(), study.ask()
    storage.record_heartbeat(alive._trial_id)
    storage.set_trial_system_attr(dead._trial_id, HEARTBEAT_ATTR, time.time() - 30)
    optuna.storages.fail_stale_trials(study)
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {alive.number: TrialState.RUNNING, dead.number: TrialState.FAIL}
    assert stale == [dead.number]
