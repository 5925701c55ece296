"""Secrets out of everything SLO-Guard writes: MLflow params and artifacts, logs, messages.

A secret is any value of ``backend.env``, any value under a key named like a token, secret,
key or password, the value after such a command-line flag (``--api-key KEY``, ``--hf-token=T``)
and the password of a URL. Secrets reach the server; what is logged shows ``***``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable
from typing import Any

REDACTED = "***"
_SECRET_NAME = re.compile(
    r"secret|passw(or)?d|credential|(^|[_.-])auth|(^|[_.-])(access_?)?token$"
    r"|(^|[_.-])(api_?)?key($|[_.-])",
    re.IGNORECASE,
)
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@/\s]*@")
_MIN_TEXT_SECRET = 6  # shorter values (HF_HUB_OFFLINE's "1") are not searched for in free text


def is_secret_name(name: str) -> bool:
    """Whether a key or flag is named like a secret (``HF_TOKEN``, ``api_key``, ``--password``)."""
    return bool(_SECRET_NAME.search(name.lstrip("-")))


def mask(url: str | None) -> str:
    """``url`` with its password replaced by ``***``."""
    if url is None:
        return ""
    return _URL_PASSWORD.sub(rf"\g<1>{REDACTED}@", url)


def redact_config(
    data: dict[str, Any], replace: Callable[[Any], Any] = lambda _: REDACTED
) -> dict[str, Any]:
    """A copy of a resolved configuration with every secret shown as ``***`` (or ``replace``)."""
    out = _redact(copy.deepcopy(data), replace)
    env = out.get("backend", {}).get("env")
    if isinstance(env, dict):
        out["backend"]["env"] = {k: replace(v) for k, v in data["backend"]["env"].items()}
    return out


def secret_values(data: dict[str, Any]) -> set[str]:
    """Every secret a resolved configuration holds (to scrub from free text such as logs)."""
    found: set[str] = set()
    env = data.get("backend", {}).get("env")
    if isinstance(env, dict):
        found.update(str(v) for v in env.values() if v is not None)
    _collect(data, found)
    return {s for s in found if len(s) >= _MIN_TEXT_SECRET}


def redact_text(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each secret (longest first) and each URL password replaced by ``***``."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return mask(text)


def redact_argv(argv: list[str]) -> list[str]:
    """A command line with the values of secret flags replaced by ``***``."""
    out = [mask(arg) for arg in argv]
    for i, flag, _ in _argv_secrets(argv):
        out[i] = f"{flag}={REDACTED}" if flag else REDACTED
    return out


def _argv_secrets(argv: list[str]) -> Iterable[tuple[int, str, str]]:
    """(index, flag if ``--flag=value`` else "", value) of each secret flag's value."""
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if eq and flag.startswith("-") and is_secret_name(flag):
            yield i, flag, value
        elif i > 0 and argv[i - 1].startswith("-") and is_secret_name(argv[i - 1]):
            yield i, "", arg


def _redact(node: Any, replace: Callable[[Any], Any]) -> Any:
    if isinstance(node, dict):
        return {
            k: (replace(v) if is_secret_name(str(k)) and v is not None else _redact(v, replace))
            for k, v in node.items()
        }
    if isinstance(node, list):
        strings = all(isinstance(v, str) for v in node)
        return redact_argv(node) if strings else [_redact(v, replace) for v in node]
    return mask(node) if isinstance(node, str) else node


def _collect(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if is_secret_name(str(k)) and isinstance(v, (str, int)) and not isinstance(v, bool):
                found.add(str(v))
            else:
                _collect(v, found)
    elif isinstance(node, list):
        if all(isinstance(v, str) for v in node):
            found.update(value for _, _, value in _argv_secrets(node))
        for v in node:
            _collect(v, found)
    elif isinstance(node, str):
        found.update(m.group(0)[len(m.group(1)) : -1] for m in _URL_PASSWORD.finditer(node))
