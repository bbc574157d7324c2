"""Stopping a demo by signal: SIGTERM and SIGHUP act like Ctrl-C."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

#: Signals that stop a demo the way Ctrl-C does, so it stops its own processes.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def stop_signals_as_interrupt() -> Iterator[None]:
    """Raise ``KeyboardInterrupt`` on SIGTERM or SIGHUP while the block runs.

    A closed terminal sends SIGHUP; without this the demo would die at once and
    leave its server and worker running.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # Signal handlers can only be installed from the main thread.
        return
    previous = {signum: signal.signal(signum, _raise_interrupt) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")
