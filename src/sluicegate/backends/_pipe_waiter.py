"""A wake-up subscription that one shared listener thread fans out to: a pipe per waiter.

The PostgreSQL and Redis backends each keep one server connection that
listens for notifications, and a thread that reads it. That thread wakes
every subscribed :class:`PipeWaiter` by writing one byte into its pipe. A
waiter's ``fileno`` is the read end, so it fits ``select`` and an event
loop's ``add_reader`` like the SQLite backend's datagram socket, and opening
one costs a pipe instead of a server connection.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from typing import Protocol


class Hub(Protocol):
    """The listener that owns a waiter and stops waking it once it is closed."""

    def unsubscribe(self, waiter: PipeWaiter) -> None: ...


class PipeWaiter:
    """A wake-up subscription: a pipe that turns readable when its channel is notified."""

    def __init__(self, hub: Hub, channel: str) -> None:
        self.channel = channel
        self._hub = hub
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._closed = False
        # The hub's thread may wake a waiter that is being closed; the lock keeps it
        # from writing to a closed descriptor whose number another file may reuse.
        self._lock = threading.Lock()

    def fileno(self) -> int:
        return self._read_fd

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a wake-up; return whether one came."""
        readable, _, _ = select.select([self._read_fd], [], [], max(timeout, 0.0))
        if readable:
            self.drain()
        return bool(readable)

    def drain(self) -> None:
        """Discard pending wake-ups, so the next wait blocks until a new one."""
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while os.read(self._read_fd, 4096):
                pass

    def wake(self) -> None:
        """Make the waiter readable, without blocking; a closed waiter is left alone."""
        with self._lock:
            if self._closed:
                return
            with contextlib.suppress(BlockingIOError, InterruptedError):
                os.write(self._write_fd, b"!")  # A full pipe means a wake-up is pending already.

    def close(self) -> None:
        self._hub.unsubscribe(self)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            os.close(self._read_fd)
            os.close(self._write_fd)
