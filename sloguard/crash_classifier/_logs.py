"""Real server logs into plain message lines: what a rule can match.

Logs arrive with decorations that change across vLLM releases, deployments and copy-pastes:
ANSI colours (also in caret notation ``^[[31m`` or with the escape byte lost, ``[31m``),
container prefixes (``vllm-1  | ``), timestamps of a log collector, per-process tags
(``(EngineCore_DP0 pid=…)``, ``(VllmWorker rank=1 pid=…)``, ``(RayWorkerWrapper pid=…, ip=…)``,
nested ones), vLLM's header (``ERROR 03-16 06:12:38 [core.py:375]``, before 0.8
``ERROR 03-16 06:12:38 core.py:375]``), ``[rank0]:`` tags and Ray's ``[repeated 6x across
cluster]``. A line keeps its level (``INFO`` lines are context, never a root cause) and its text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ANSI = re.compile(r"(?:\x1b|\^\[)\[[0-9;]*[A-Za-z]|(?<![\w\]])\[[0-9;]{1,8}m")
_CONTAINER = re.compile(r"^\s*(?:[\w.-]+\s+)?\|\s")  # docker compose: "vllm-1  | "
_COLLECTOR = re.compile(  # RFC 3339 or "[2024-09-05T00:38:34Z]" stamps of a log collector
    r"^\[?\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?\]?\s+"
)
_PROCESS = re.compile(r"^\((?=[^()]*\b(?:pid|rank)=)[^()]*\) ?")  # "(VllmWorker rank=1 pid=7) "
_RAY_SOURCE = re.compile(r"^\((?:raylet|gcs_server|autoscaler)[^()]*\) ?")
_RANK = re.compile(r"^\[rank\d+\]: ?")
_LEVEL = r"(?P<level>DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL)"
_HEADER = re.compile(  # vLLM's: "ERROR 03-16 06:12:38 [core.py:375] " or "... core.py:375] "
    _LEVEL + r"\s+(?:\d{4}-)?\d\d-\d\d[ T][\d:.,]+\s+(?:\[[^\]]*\]|[\w./-]+:\d+\]) ?"
)
_PLAIN_LEVEL = re.compile(_LEVEL + r":\s+")  # uvicorn's "ERROR:    [Errno 98] ..."
_GLOG = re.compile(r"^\[(?P<glog>[IWEF])(?:\d{3,4} [\d:.]+)? [^\]]+\] ?")  # torch/NCCL C++
_GLOG_LEVELS = {"I": "INFO", "W": "WARNING", "E": "ERROR", "F": "CRITICAL"}
_EXCEPTION = re.compile(r"^[\w.]*(Error|Exception|Exit|Interrupt)\b")
_FRAME = re.compile(
    r'^(File ".*", line \d+|Traceback \(most recent call last\)|frame #\d+:|\^[\^~ ]*$'
    r"|During handling of the above exception|The above exception was the direct cause)"
)
_REPEATED = re.compile(r"\s*\[repeated \d+x across cluster\]")
_QUOTE = re.compile(r"^(?:>\s?)+")  # a paste quoted in an issue thread


@dataclass(frozen=True)
class Line:
    """One log line, undecorated.

    Args:
        text: The message, without prefixes, header or colours.
        level: The line's log level (``None`` for raw stderr: tracebacks, prints).
        frame: A traceback's frame, source line or marker (where, not what).
    """

    text: str
    level: str | None = None
    frame: bool = False

    @property
    def is_context(self) -> bool:
        """Frames and INFO, DEBUG and WARNING lines tell where the server was, not why it died."""
        return self.frame or self.level in ("INFO", "DEBUG", "WARNING", "WARN")


def clean(raw: str) -> Line:
    """Strip one line's decorations, keeping its level."""
    text = _ANSI.sub("", raw.replace("\r", "")).rstrip()
    text = _QUOTE.sub("", text)
    for pattern in (_CONTAINER, _COLLECTOR, _CONTAINER):
        text = pattern.sub("", text, count=1)
    text = text.lstrip()
    while True:  # nested tags: "(APIServer pid=1) (EngineCore_DP0 pid=68) ..."
        stripped = _RANK.sub("", _RAY_SOURCE.sub("", _PROCESS.sub("", text, count=1)))
        if stripped == text:
            break
        text = stripped
    level = None
    header = _HEADER.match(text) or _PLAIN_LEVEL.match(text)
    if header:
        level = header["level"]
        text = text[header.end() :]
    glog = _GLOG.match(text.lstrip())
    if glog:
        level = level if level else _GLOG_LEVELS[glog["glog"]]
        text = text.lstrip()[glog.end() :]
    text = _REPEATED.sub("", text).strip()
    return Line(text, level, bool(_FRAME.match(text)))


def lines_of(log_text: str) -> list[Line]:
    """Every non-empty line of a log, undecorated; the source line under a frame is a frame."""
    lines: list[Line] = []
    for line in map(clean, log_text.splitlines()):
        if not line.text:
            continue
        after_frame = lines and lines[-1].frame and lines[-1].text.startswith("File ")
        if after_frame and not line.frame and not _EXCEPTION.match(line.text):
            line = Line(line.text, line.level, frame=True)  # the code that frame points at
        lines.append(line)
    return lines
