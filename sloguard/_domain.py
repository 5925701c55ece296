"""Value domains of configuration fields, declared beside the fields and checked in one walk."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from sloguard.exceptions import ConfigError

LARGE_OPT_OUT = "allow_large"


@dataclass(frozen=True)
class Domain:
    """Bounds a number must keep; ``large`` is a sane upper bound that ``allow_large`` lifts."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    large: float | None = None

    def describe(self, allow_large: bool, integer: bool = False) -> str:
        """The domain in words, e.g. ``a finite number > 0 and <= 1``."""
        parts = [
            f"{op} {_fmt(bound)}"
            for op, bound in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
            if bound is not None
        ]
        if self.large is not None and not allow_large:
            parts.append(f"<= {_fmt(self.large)} ({LARGE_OPT_OUT}=true lifts this bound)")
        kind = "an integer" if integer else "a finite number"
        return kind + (" " + " and ".join(parts) if parts else "")

    def check(self, key: str, value: Any, allow_large: bool) -> None:
        """Raise ConfigError naming ``key`` where ``value`` is outside the domain."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        inside = (
            math.isfinite(value)
            and (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
            and (self.large is None or allow_large or value <= self.large)
        )
        if not inside:
            raise ConfigError(
                f"{key}={value} is invalid; it must be "
                f"{self.describe(allow_large, isinstance(value, int))}"
            )


_FINITE = Domain()


def num(default: Any = dataclasses.MISSING, **bounds: float) -> Any:
    """A dataclass field holding a number (or a list of numbers) within ``bounds``."""
    metadata = {"domain": Domain(**bounds)}
    if isinstance(default, list):
        items = list(default)
        return field(default_factory=lambda: list(items), metadata=metadata)
    return field(default=default, metadata=metadata)


def text(default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field holding text that must not be empty (a name, a folder)."""
    return field(default=default, metadata={"nonempty": True})


def check_domains(obj: Any, allow_large: bool, prefix: str = "") -> None:
    """Check every field of a dataclass tree against its declared domain.

    Numbers must be finite and within their field's bounds; text must be one printable line
    (and not empty where the field says so).

    Raises:
        ConfigError: Naming the first value outside its domain.
    """
    for f in dataclasses.fields(obj):
        key, value = prefix + f.name, getattr(obj, f.name)
        domain: Domain = f.metadata.get("domain", _FINITE)
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            where = f"{key}[{i}]" if isinstance(value, list) else key
            if dataclasses.is_dataclass(item):
                check_domains(item, allow_large, where + ".")
            elif isinstance(item, str):
                _check_text(where, item, bool(f.metadata.get("nonempty")))
            elif item is not None:
                domain.check(where, item, allow_large)


def _check_text(key: str, value: str, nonempty: bool) -> None:
    if (nonempty and not value.strip()) or any(ord(c) < 32 or ord(c) == 127 for c in value):
        empty = "not empty, " if nonempty else ""
        raise ConfigError(f"{key}={value!r} is invalid; it must be {empty}one line of text")


def _fmt(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"
