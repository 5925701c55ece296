"""Exceptions shared across SLO-Guard; a leaf module, so anything can import it."""

from __future__ import annotations

import errno


class ConfigError(ValueError):
    """A configuration value is invalid; the message is one line naming it and what is allowed."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the work; the process exits with 128 + ``signum``.

    Args:
        signum: The signal that arrived.
        study: The study it interrupted, once known.
    """

    def __init__(self, signum: int, study: str | None = None) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum
        self.study = study


class StoreDamaged(ConfigError):
    """A study's store cannot be read back as written; the message says where and what to do."""


class DiskFull(OSError):
    """A write found no space left; the study stops and resumes once there is space."""

    study: str | None = None


NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
