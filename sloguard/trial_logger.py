"""The fsync-durable trial log (JSONL): the source of truth a study resumes from.

Line 1 is a header with the study's name, config and config hash; every further line is one
finished trial. A line is flushed and fsync'ed before the trial is reported anywhere else, so a
kill at any moment loses at most the trial in flight. A torn last line (killed mid-write) is
dropped when the log is reopened.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sloguard.result import TrialResult

LOG_NAME = "trials.jsonl"
SCHEMA_VERSION = 1


@dataclass
class TrialRecord:
    """One finished trial as logged.

    Args:
        number: 0-based trial index in the study.
        params: The knobs the optimizer proposed (active ones only).
        result: The evaluation of the repaired configuration.
        phase: The optimizer phase that proposed it.
        repairs: What the repair pass changed.
        wall_s: Wall-clock seconds the evaluation took.
    """

    number: int
    params: dict[str, Any]
    result: TrialResult
    phase: str = ""
    repairs: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "params": self.params,
            "phase": self.phase,
            "repairs": self.repairs,
            "wall_s": round(self.wall_s, 4),
            "result": self.result.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialRecord:
        return cls(
            number=data["number"],
            params=data["params"],
            result=TrialResult.from_dict(data["result"]),
            phase=data.get("phase", ""),
            repairs=data.get("repairs", []),
            wall_s=data.get("wall_s", 0.0),
        )


class TrialLog:
    """Append-only, fsync'ed JSONL of a study's trials.

    Example:
        >>> log = TrialLog.create(tmp_dir, header={"study_name": "s"})  # doctest: +SKIP
        >>> log.append(record)  # doctest: +SKIP

    Args:
        path: The ``trials.jsonl`` file.
        header: The study header (first line).
        records: Trials already in the log.
    """

    def __init__(self, path: Path, header: dict[str, Any], records: list[TrialRecord]) -> None:
        self.path = path
        self.header = header
        self.records = records

    @classmethod
    def create(cls, directory: Path, header: dict[str, Any]) -> TrialLog:
        """Start a new log in ``directory`` (which must not hold one yet)."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / LOG_NAME
        header = {"type": "header", "schema": SCHEMA_VERSION, **header}
        with open(path, "x", encoding="utf-8") as f:
            _write_line(f, header)
        _fsync_dir(directory)
        return cls(path, header, [])

    @classmethod
    def open(cls, directory: Path) -> TrialLog:
        """Read an existing log, dropping a torn last line if the writer was killed mid-line."""
        path = directory / LOG_NAME
        raw = path.read_bytes()
        lines = raw.split(b"\n")
        complete, torn = lines[:-1], lines[-1]
        if torn:  # no trailing newline: the last write did not finish
            with open(path, "r+b") as f:
                f.truncate(len(raw) - len(torn))
                os.fsync(f.fileno())
        rows = [json.loads(line) for line in complete if line.strip()]
        if not rows or rows[0].get("type") != "header":
            raise ValueError(f"{path} is not a SLO-Guard trial log (no header line)")
        records = [TrialRecord.from_dict(r) for r in rows[1:]]
        for i, rec in enumerate(records):
            if rec.number != i:
                raise ValueError(f"{path}: trial {rec.number} found where {i} was expected")
        return cls(path, rows[0], records)

    def append(self, record: TrialRecord) -> None:
        """Durably add one finished trial."""
        if record.number != len(self.records):
            raise ValueError(f"trial {record.number} appended after {len(self.records)} trials")
        with open(self.path, "a", encoding="utf-8") as f:
            _write_line(f, record.to_dict())
        self.records.append(record)


def _write_line(f: Any, data: dict[str, Any]) -> None:
    f.write(json.dumps(data, allow_nan=True, separators=(",", ":")) + "\n")
    f.flush()
    os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
