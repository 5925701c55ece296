"""Storages: URL forms, bad URLs, the journal's durability gaps closed, journal heartbeats."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from sloguard.config import ConfigError
from sloguard.study import StorageSpec
from sloguard.study._storage import HEARTBEAT_ATTR, HeartbeatJournalStorage, mask


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
