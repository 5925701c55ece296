"""Read why a server failed: the root-cause line of its log, else its exit, else its clients."""

from __future__ import annotations

import signal
from collections.abc import Sequence

from sloguard.crash_classifier._logs import Line, lines_of
from sloguard.crash_classifier._rules import OOM_PHASES, RULES, Rule
from sloguard.crash_classifier._taxonomy import CrashCategory, CrashInfo

_MAX_EVIDENCE = 500
_EXPLAINS = ("shm_too_small", "disk_full", "permission_denied")  # behind a device error
_EXPLAIN_WINDOW = 6  # lines after a device error that may hold its reason (NCCL "Last error:")
_PHASE_LOOKBACK = 80  # lines before a raw OOM whose frames tell where it happened


def classify(
    log_text: str,
    exit_code: int | None = None,
    *,
    phase: str = "startup",
    http_errors: Sequence[str] = (),
    oom_killed: bool = False,
) -> CrashInfo:
    """Read why a server failed from its log, exit status and the errors its clients saw.

    The root cause is the earliest line stating a cause (an OOM, a device error, a refusal, an
    unreachable model, ...); a generic exception type comes next, a notice that some process
    died last (``EngineCore failed to start`` follows the root cause in a chained traceback).
    INFO and WARNING lines never decide, but tell where a raw device OOM happened. Without any
    such line the exit status or the clients' errors are the evidence: a signal is an outside
    kill (``infra``) unless the kernel's OOM killer fired meanwhile (``oom_killed``).

    Args:
        log_text: The server's combined stdout/stderr.
        exit_code: The server's exit status (negative: killed by that signal), ``None`` if it is
            still running.
        phase: ``startup`` or ``load``.
        http_errors: Request errors seen during load (resets, 5xx, hung streams).
        oom_killed: The kernel's OOM killer killed a process while the server ran.
    """
    lines = lines_of(log_text)
    found = _root_cause(lines)
    if found is not None:
        index, rule, text = found
        return CrashInfo(rule.category, _subcause(rule, lines, index, phase), _clip(text), phase)
    if exit_code is not None and exit_code < 0:
        name = _signal_name(-exit_code)
        evidence = f"server process killed by {name}" + _first_error(http_errors)
        if oom_killed:
            return CrashInfo(CrashCategory.OOM, "host_oom", evidence + " (OOM killer)", phase)
        return CrashInfo(CrashCategory.INFRA, f"killed_by_{name.lower()}", evidence, phase)
    if exit_code is not None:
        tail = next((ln.text for ln in reversed(lines)), "")
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


def _root_cause(lines: list[Line]) -> tuple[int, Rule, str] | None:
    """The best (tier, earliest line, first rule) match; a line may continue on the next."""
    best: tuple[int, int, int, str] | None = None
    for i, line in enumerate(lines):
        window = line.text if i + 1 >= len(lines) else f"{line.text} {lines[i + 1].text}"
        for r, rule in enumerate(RULES):
            if line.is_context and not rule.context_ok:
                continue
            if best is not None and (rule.tier, i, r) >= best[:3]:
                break  # rules are in tier order: nothing later on this line can win
            match = rule.pattern.search(window)
            if match and match.start() < len(line.text):
                text = window if match.end() > len(line.text) else line.text
                best = (rule.tier, i, r, text)
                break
    if best is None:
        return None
    _, index, r, text = best
    rule = RULES[r]
    if rule.detail is not None:  # the message is on a line of its own after the match
        for j in range(index + 1, min(index + 1 + _EXPLAIN_WINDOW, len(lines))):
            if rule.detail.search(lines[j].text):
                return j, rule, lines[j].text
    if rule.category is CrashCategory.CUDA:  # a reason right after it explains it
        for j in range(index + 1, min(index + 1 + _EXPLAIN_WINDOW, len(lines))):
            for other in RULES:
                if other.subcause in _EXPLAINS and other.pattern.search(lines[j].text):
                    return j, other, lines[j].text
    return index, rule, text


def _subcause(rule: Rule, lines: list[Line], index: int, phase: str) -> str:
    """A raw device OOM's subcause: where the traceback (or the progress log) says it was."""
    if rule.subcause != "device_oom":
        return rule.subcause
    if phase == "load":
        return "oom_under_load"
    for j in range(index, max(index - _PHASE_LOOKBACK, -1), -1):
        for subcause, pattern in OOM_PHASES:
            if pattern.search(lines[j].text):
                return subcause
    return rule.subcause


def _clip(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _MAX_EVIDENCE else text[: _MAX_EVIDENCE - 3] + "..."


def _first_error(errors: Sequence[str]) -> str:
    return f"; {len(errors)} requests failed, first: {_clip(errors[0])}" if errors else ""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"
