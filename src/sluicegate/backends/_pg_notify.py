"""Wake-up for the PostgreSQL backend: one LISTEN connection fanned out to local pipes.

Producers and workers send ``pg_notify`` inside their transactions, so a
notification leaves only when the messages it announces are committed. Each
backend keeps one dedicated autocommit connection that LISTENs on its
channels, and a thread that wakes every subscribed
:class:`~sluicegate.backends._pipe_waiter.PipeWaiter` at each notification.

When the connection drops, the thread reconnects with backoff and then wakes
every waiter once, because notifications sent while it was away are lost.
Waiters poll at a long interval too, so a lost wake-up only delays work.
"""

from __future__ import annotations

import logging
import os
import random
import select
import threading
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import pq, sql

from sluicegate.backends._pipe_waiter import PipeWaiter

logger = logging.getLogger(__name__)

#: Seconds ``subscribe`` waits for the first LISTEN before it returns anyway.
LISTEN_READY_TIMEOUT = 10.0

#: First and longest pause, in seconds, between two reconnection attempts.
RECONNECT_DELAY = 0.05
MAX_RECONNECT_DELAY = 2.0

#: TCP keepalive settings, so a silently lost server is noticed within about 25 s.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


class NotificationHub:
    """One LISTEN connection and its thread, shared by every waiter of one backend.

    Parameters:
      connect: opens a new autocommit connection to the server.
      channels: the notification channels to LISTEN on.
      describe: the server's URL with the password hidden, for log lines.
    """

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        channels: tuple[str, ...],
        describe: str,
    ) -> None:
        self._connect = connect
        self._channels = channels
        self._describe = describe
        self._waiters: dict[str, set[PipeWaiter]] = {channel: set() for channel in channels}
        self._lock = threading.Lock()
        self._listening = threading.Event()
        self._stop_read, self._stop_write = os.pipe()
        self._closed = False
        self._thread: threading.Thread | None = None

    def subscribe(self, channel: str) -> PipeWaiter:
        """Return a waiter woken by notifications on ``channel``; the caller closes it.

        The first call starts the LISTEN thread and waits until it listens,
        so a notification committed after this returns is never missed.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("the notification hub is closed")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sluicegate-listen", daemon=True
                )
                self._thread.start()
        if not self._listening.wait(LISTEN_READY_TIMEOUT):
            logger.warning(
                "listen connection not ready, waiters fall back to polling url=%s timeout_s=%g",
                self._describe,
                LISTEN_READY_TIMEOUT,
            )
        waiter = PipeWaiter(self, channel)
        with self._lock:
            self._waiters[channel].add(waiter)
        return waiter

    def unsubscribe(self, waiter: PipeWaiter) -> None:
        with self._lock:
            self._waiters[waiter.channel].discard(waiter)

    def close(self) -> None:
        """Stop the thread and close the LISTEN connection."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        os.write(self._stop_write, b"!")
        if thread is not None:
            thread.join(timeout=10.0)
        os.close(self._stop_read)
        os.close(self._stop_write)

    # -- the thread

    def _run(self) -> None:
        failures = 0
        delay = RECONNECT_DELAY
        while not self._closed:
            try:
                conn = self._connect()
            except psycopg.OperationalError as exc:
                failures += 1
                logger.warning(
                    "listen connection failed, retrying url=%s attempt=%d delay_s=%.2f error=%s",
                    self._describe,
                    failures,
                    delay,
                    _first_line(exc),
                )
                if self._stop_requested(random.uniform(delay / 2, delay)):
                    return
                delay = min(delay * 2, MAX_RECONNECT_DELAY)
                continue
            try:
                self._listen(conn)
                if failures:
                    logger.info(
                        "listen connection restored url=%s attempts=%d", self._describe, failures
                    )
                    self._wake_all()
                failures, delay = 0, RECONNECT_DELAY
                self._listening.set()
                self._pump(conn)
            except psycopg.Error as exc:
                self._listening.clear()
                failures = 1
                logger.warning(
                    "listen connection lost, reconnecting url=%s error=%s",
                    self._describe,
                    _first_line(exc),
                )
                self._wake_all()  # Notifications may be lost; let every waiter look once.
            finally:
                conn.close()

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        for channel in self._channels:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

    def _pump(self, conn: psycopg.Connection[Any]) -> None:
        """Forward notifications until the hub closes; raise when the connection fails."""
        pgconn = conn.pgconn
        while True:
            readable, _, _ = select.select([pgconn.socket, self._stop_read], [], [])
            if self._stop_read in readable:
                return
            pgconn.consume_input()
            if pgconn.status != pq.ConnStatus.OK:
                raise psycopg.OperationalError("the listen connection was closed by the server")
            while (notify := pgconn.notifies()) is not None:
                self._dispatch(notify.relname.decode())

    def _dispatch(self, channel: str) -> None:
        with self._lock:
            waiters = list(self._waiters.get(channel, ()))
        for waiter in waiters:
            waiter.wake()

    def _wake_all(self) -> None:
        for channel in self._channels:
            self._dispatch(channel)

    def _stop_requested(self, timeout: float) -> bool:
        readable, _, _ = select.select([self._stop_read], [], [], timeout)
        return bool(readable) or self._closed


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
