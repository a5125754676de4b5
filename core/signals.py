"""Process stop signals, handled in one place.

``stop_on_signals()`` returns an event that SIGINT (Ctrl-C) and SIGTERM (``docker stop``,
the supervisor, a test's ``terminate()``) set: long-running commands loop on ``stop.wait(...)``
and shut down cleanly. ``exit_on_sigterm()`` makes SIGTERM unwind like Ctrl-C instead, so
``finally`` blocks stop what a command started.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def stop_on_signals(stop: threading.Event | None = None) -> threading.Event:
    """Install handlers that set ``stop`` (a new event if none) on SIGINT and SIGTERM; main
    thread only, as Python's signal handlers are."""
    event = stop if stop is not None else threading.Event()
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda *_: event.set())
    return event


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def exit_on_sigterm() -> None:
    """SIGTERM raises ``SystemExit(143)`` in the main thread (finally blocks run)."""
    signal.signal(signal.SIGTERM, _raise_exit)
