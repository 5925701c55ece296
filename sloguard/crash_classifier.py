"""The crash taxonomy: every failed trial is oom, cuda, timeout or config (else unknown).

A crash carries a subcause and the evidence line it was read from, so a user can see at a glance
why a configuration died and the optimizers can learn which regions die. :func:`classify` reads
them from a real server's log, exit status and client-side errors; the simulator emits the same
message texts, so both backends land in the same categories.
"""

from __future__ import annotations

import argparse
import enum
import json
import re
import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


class CrashCategory(str, enum.Enum):
    """The four categories of the seed's taxonomy, plus ``unknown`` for the unexplained."""

    OOM = "oom"
    CUDA = "cuda"
    TIMEOUT = "timeout"
    CONFIG = "config"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class CrashInfo:
    """Why a trial failed.

    Args:
        category: The taxonomy category.
        subcause: A short machine-readable cause, e.g. ``kv_cache_too_small``.
        evidence: The log line or message the category was read from.
        phase: ``startup`` (the server never served) or ``load`` (it died or hung under load).
    """

    category: CrashCategory
    subcause: str
    evidence: str
    phase: str = "startup"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["category"] = self.category.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CrashInfo:
        return cls(
            CrashCategory(data["category"]),
            data["subcause"],
            data["evidence"],
            data.get("phase", "startup"),
        )


# (pattern, category, subcause), most specific first: a log usually holds the root cause and the
# generic "EngineCore failed to start" that followed it, and the root cause must win.
_RULES: tuple[tuple[re.Pattern[str], CrashCategory, str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), category, subcause)
    for pattern, category, subcause in (
        # memory
        (r"out of memory occurred when warming up sampler", CrashCategory.OOM, "sampler_warmup"),
        (r"during CUDA graph capture", CrashCategory.OOM, "cudagraph_capture"),
        (r"while loading weights", CrashCategory.OOM, "weights_do_not_fit"),
        (
            r"To serve at least one request with the model's max seq len",
            CrashCategory.OOM,
            "kv_cache_too_small",
        ),
        (r"No available memory for the cache blocks", CrashCategory.OOM, "no_kv_cache_memory"),
        (
            r"Available memory on node .* is less than requested memory for kv",
            CrashCategory.OOM,
            "no_kv_cache_memory",
        ),  # the CPU build's wording
        (
            r"Free memory on device .* is less than desired GPU memory utilization",
            CrashCategory.OOM,
            "insufficient_free_memory",
        ),
        (r"OutOfMemoryError|CUDA out of memory", CrashCategory.OOM, "oom_under_load"),
        (r"Cannot allocate memory|std::bad_alloc|\bMemoryError\b", CrashCategory.OOM, "host_oom"),
        # device errors
        (r"illegal memory access", CrashCategory.CUDA, "illegal_memory_access"),
        (r"device-side assert", CrashCategory.CUDA, "device_side_assert"),
        (r"NCCL error|ncclSystemError|ncclInternalError", CrashCategory.CUDA, "nccl_error"),
        (r"CUBLAS_STATUS|CUDNN_STATUS|cuDNN error", CrashCategory.CUDA, "cublas_error"),
        (r"CUDA error|CUDA driver|no CUDA-capable device", CrashCategory.CUDA, "cuda_error"),
        # configurations vLLM refuses
        (
            r"is greater than the derived max_model_len",
            CrashCategory.CONFIG,
            "max_model_len_too_large",
        ),
        (
            r"max_num_batched_tokens \(\d+\) must be greater than or equal to max_num_seqs",
            CrashCategory.CONFIG,
            "batched_tokens_below_num_seqs",
        ),
        (
            r"max_num_batched_tokens \(\d+\) is smaller than max_model_len",
            CrashCategory.CONFIG,
            "batched_tokens_below_max_model_len",
        ),
        (
            r"quantization method .* is not supported|Unknown quantization method",
            CrashCategory.CONFIG,
            "quantization_unsupported",
        ),
        (
            r"error: unrecognized arguments|error: argument |invalid choice",
            CrashCategory.CONFIG,
            "bad_argument",
        ),
        (r"Address already in use", CrashCategory.CONFIG, "port_in_use"),
        (
            r"Repo id must be|is not a local folder|does not appear to have a file named config",
            CrashCategory.CONFIG,
            "model_not_found",
        ),
        (r"(ValidationError|ValueError):", CrashCategory.CONFIG, "invalid_value"),
        # hangs
        (r"Timed out waiting for engine core", CrashCategory.TIMEOUT, "engine_start_timeout"),
        # generic deaths: no cause in the log
        (r"EngineDeadError|EngineCore encountered an issue", CrashCategory.UNKNOWN, "engine_dead"),
        (r"Worker proc .* died unexpectedly", CrashCategory.UNKNOWN, "worker_died"),
        (
            r"EngineCore failed to start|Engine core initialization failed",
            CrashCategory.UNKNOWN,
            "engine_start_failed",
        ),
    )
)
_MAX_EVIDENCE = 500


def classify(
    log_text: str,
    exit_code: int | None = None,
    *,
    phase: str = "startup",
    http_errors: Sequence[str] = (),
) -> CrashInfo:
    """Read why a server failed from its log, exit code and the errors its clients saw.

    The first rule (most specific first) that matches a log line decides the category; its line
    is the evidence. With no matching line, a signal exit code or the clients' errors are the
    evidence and the category is ``unknown``: an unexplained failure is never silently feasible.

    Args:
        log_text: The server's combined stdout/stderr.
        exit_code: The server's exit status (negative: killed by that signal), ``None`` if it is
            still running.
        phase: ``startup`` or ``load``.
        http_errors: Request errors seen during load (resets, 5xx, hung streams).
    """
    lines = log_text.splitlines()
    for pattern, category, subcause in _RULES:
        for line in lines:
            if pattern.search(line):
                return CrashInfo(category, subcause, _clip(line), phase)
    if exit_code is not None and exit_code < 0:
        name = _signal_name(-exit_code)
        return CrashInfo(
            CrashCategory.UNKNOWN,
            f"killed_by_{name.lower()}",
            f"server process killed by {name}" + _first_error(http_errors),
            phase,
        )
    if exit_code is not None:
        tail = next((ln for ln in reversed(lines) if ln.strip()), "")
        return CrashInfo(
            CrashCategory.UNKNOWN,
            "server_exited",
            f"server exited with status {exit_code}: {_clip(tail)}" + _first_error(http_errors),
            phase,
        )
    if http_errors:
        return CrashInfo(
            CrashCategory.UNKNOWN,
            "request_failures",
            f"{len(http_errors)} requests failed" + _first_error(http_errors),
            phase,
        )
    return CrashInfo(CrashCategory.UNKNOWN, "unexplained", "no error in the log", phase)


# "(EngineCore pid=1) ERROR 11-21 16:11:41 [core.py:1510] " -> "(EngineCore pid=1) "
_LOG_PREFIX = re.compile(r"^(\(\w+ pid=\d+\) )?[A-Z]+ \d\d-\d\d [\d:]+ \[[^\]]*\]\s*")


def _clip(line: str) -> str:
    line = _LOG_PREFIX.sub(r"\1", line.strip())
    return line if len(line) <= _MAX_EVIDENCE else line[: _MAX_EVIDENCE - 3] + "..."


def _first_error(errors: Sequence[str]) -> str:
    return f"; {len(errors)} requests failed, first: {_clip(errors[0])}" if errors else ""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


def main(argv: Sequence[str] | None = None) -> None:
    """``sloguard classify-crash LOGFILE [--exit-code N] [--phase load]``: print JSON."""
    parser = argparse.ArgumentParser(
        prog="sloguard classify-crash",
        description="Classify why a vLLM server failed, from its log (and exit code).",
    )
    parser.add_argument("logfile", help="the server's log ('-' for standard input)")
    parser.add_argument(
        "--exit-code", type=int, default=None, help="its exit status (negative: signal)"
    )
    parser.add_argument("--phase", choices=("startup", "load"), default="startup")
    args = parser.parse_args(argv)
    try:
        text = (
            sys.stdin.read()
            if args.logfile == "-"
            else Path(args.logfile).read_text(encoding="utf-8", errors="replace")
        )
    except OSError as e:
        parser.exit(
            2, f"sloguard classify-crash: error: cannot read {args.logfile!r}: {e.strerror}\n"
        )
    print(json.dumps(classify(text, args.exit_code, phase=args.phase).to_dict(), indent=2))
