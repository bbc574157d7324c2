"""SQLite writes read the clock once they hold the write lock, not while they wait for it."""

from __future__ import annotations

import threading
from types import TracebackType

from conformance_backends import FakeClock, message

from sluicegate.backends.sqlite import SQLiteBackend
from sluicegate.broker import QueueBounds
from sluicegate.message import Delivery

LEASE = 5.0
WAIT = 8.0


class WatchedLock:
    """A reentrant lock that reports when a thread starts waiting for it."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.waiting = threading.Event()

    def acquire(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            self.waiting.set()
        self.lock.acquire()

    def release(self) -> None:
        self.lock.release()

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def test_exchange_leases_from_lock_time(backend: SQLiteBackend, clock: FakeClock) -> None:
    backend.publish([message(clock)], QueueBounds())
    turn = WatchedLock()
    backend._write_turn = turn  # type: ignore[assignment]
    deliveries: list[Delivery] = []
    reserving = threading.Thread(
        target=lambda: deliveries.extend(backend.reserve(["q"], 1, LEASE, "w1"))
    )

    with turn:
        reserving.start()
        assert turn.waiting.wait(timeout=30), "the reserve never reached the write lock"
        clock.advance(WAIT)
    reserving.join(timeout=30)

    assert not reserving.is_alive()
    assert len(deliveries) == 1
    assert deliveries[0].lease_until == clock() + LEASE
