"""The crash taxonomy and the classifier that reads it from real server logs.

Every failed trial is ``oom``, ``cuda``, ``timeout``, ``config`` or ``infra`` (not the
configuration's fault), else ``unknown``; a crash carries a subcause and the evidence line it
was read from, so a user sees at a glance why a configuration died and the optimizers learn which
regions die. :func:`classify` reads them from a server's log, exit status and client errors; the
simulator emits the same message texts, so both backends land in the same categories.
"""

from __future__ import annotations

from sloguard.crash_classifier._classify import classify
from sloguard.crash_classifier._cli import main
from sloguard.crash_classifier._logs import Line, clean, lines_of
from sloguard.crash_classifier._rules import RULES, Rule
from sloguard.crash_classifier._taxonomy import CrashCategory, CrashInfo

__all__ = [
    "RULES",
    "CrashCategory",
    "CrashInfo",
    "Line",
    "Rule",
    "classify",
    "clean",
    "lines_of",
    "main",
]
