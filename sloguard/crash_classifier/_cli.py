"""``sloguard classify-crash LOGFILE``: classify a failed server's log, print JSON."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from sloguard.crash_classifier._classify import classify


def main(argv: Sequence[str] | None = None) -> None:
    """``sloguard classify-crash LOGFILE [--exit-code N] [--phase load] [--oom-killed]``."""
    parser = argparse.ArgumentParser(
        prog="sloguard classify-crash",
        description="Classify why a vLLM server failed, from its log (and exit code).",
    )
    parser.add_argument("logfile", help="the server's log ('-' for standard input)")
    parser.add_argument(
        "--exit-code", type=int, default=None, help="its exit status (negative: signal)"
    )
    parser.add_argument("--phase", choices=("startup", "load"), default="startup")
    parser.add_argument(
        "--oom-killed",
        action="store_true",
        help="the kernel's OOM killer fired while the server ran (a signal exit is then oom)",
    )
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
    crash = classify(text, args.exit_code, phase=args.phase, oom_killed=args.oom_killed)
    print(json.dumps(crash.to_dict(), indent=2))
