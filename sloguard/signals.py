"""SIGINT and SIGTERM as :class:`~sloguard.exceptions.Interrupted`, deferrable around setup.

Handlers are installed explicitly, so a tuner started in the background by a script (which
inherits SIGINT ignored) still stops on Ctrl-C or ``kill -INT``. Inside :func:`deferred` a signal
is held until the block ends, so bookkeeping (creating a study's MLflow run, storing a result,
logging a trial) is never cut in half; :func:`allowed` opens it again where the time goes (a
trial's evaluation, waiting for other workers).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType

from sloguard.exceptions import Interrupted

HANDLED = (signal.SIGINT, signal.SIGTERM)
_pending: list[int] = []
_depth = 0


def _raise(signum: int, frame: FrameType | None) -> None:
    if _depth:
        _pending.append(signum)
        return
    raise Interrupted(signum)


def exit_status(e: KeyboardInterrupt) -> int:
    """128 + the signal that stopped the work (130 for a plain Ctrl-C)."""
    return 128 + int(getattr(e, "signum", signal.SIGINT))


def signal_name(e: KeyboardInterrupt) -> str:
    """``SIGINT`` or ``SIGTERM``: which signal stopped the work."""
    return signal.Signals(int(getattr(e, "signum", signal.SIGINT))).name


@contextmanager
def handled() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise Interrupted (main thread only; else no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise) for sig in HANDLED}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def install() -> None:
    """Make SIGINT and SIGTERM raise Interrupted for the rest of the process."""
    for sig in HANDLED:
        signal.signal(sig, _raise)


def raise_pending() -> None:
    """Raise Interrupted for a signal held past a ``deferred(hold=True)`` block."""
    if _pending and not _depth:
        signum = _pending[0]
        _pending.clear()
        raise Interrupted(signum)


@contextmanager
def allowed() -> Iterator[None]:
    """Inside a deferred block, let the signals through again (a trial's run, a long wait)."""
    global _depth
    saved, _depth = _depth, 0
    try:
        raise_pending()
        yield
    finally:
        _depth = saved


class deferred:
    """Hold SIGINT and SIGTERM until the block ends; then raise, unless an error is in flight.

    Args:
        hold: Keep a signal pending past the block, for :func:`raise_pending` to raise where
            the caller can clean up.
    """

    def __init__(self, hold: bool = False) -> None:
        self.hold = hold

    def __enter__(self) -> None:
        global _depth
        _depth += 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        global _depth
        _depth -= 1
        if _depth == 0 and _pending and not self.hold:
            signum = _pending[0]
            _pending.clear()
            if exc_type is None:
                raise Interrupted(signum)
