"""Optional dependencies, imported on first use in one way: ``optional`` or ``require``."""

from __future__ import annotations

import importlib
from types import ModuleType

from sloguard.exceptions import ConfigError


def optional(module: str) -> ModuleType | None:
    """``module`` if it is installed, else ``None`` (for features with a fallback)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def require(module: str, needed_by: str, extra: str) -> ModuleType:
    """``module``, or one line saying what needs it and which extra installs it.

    Raises:
        ConfigError: ``module`` is not installed.
    """
    found = optional(module)
    if found is None:
        raise ConfigError(
            f"{needed_by} needs {module}, which is not installed; install the extra: "
            f"pip install -e '.[{extra}]'"
        )
    return found
