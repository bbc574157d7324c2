"""Wake-up for the Redis backend: a pub/sub subscription behind a stable file descriptor.

The scripts PUBLISH on ``{P}:wake`` when messages become ready and on
``{P}:results`` when a job becomes final. A :class:`PubSubWaiter` holds one
subscription on its own connection and a thread that blocks reading it (the
server pushes each message, so nothing polls). Each message writes one byte
into a socket pair whose read end is the waiter's ``fileno()``.

The socket pair, not the Redis socket, is what a caller watches, because the
Redis socket is replaced when the connection is re-established: the worker's
``loop.add_reader(listener.fileno())`` stays valid across a server restart.
After each reconnect the thread writes one byte too, since a message
published while it was away is lost and the caller must look for work.
"""

from __future__ import annotations

import contextlib
import logging
import random
import select
import socket
import threading
from typing import Any

import redis

logger = logging.getLogger(__name__)

#: Seconds the subscriber thread blocks in one read; it checks for close() in between.
READ_TIMEOUT = 1.0

#: Seconds to wait for the server to confirm a subscription.
SUBSCRIBE_TIMEOUT = 10.0

#: Bounds, in seconds, of the backoff between two reconnect attempts.
MIN_BACKOFF = 0.05
MAX_BACKOFF = 2.0


class PubSubWaiter:
    """A subscription to one channel that a caller waits on like a socket.

    It is subscribed when the constructor returns, so a message published
    after that wakes it. Raises ``redis.ConnectionError`` if the first
    subscription fails.
    """

    def __init__(self, client: redis.Redis, channel: str, address: str) -> None:
        self._client = client
        self._channel = channel
        self._address = address
        self._closed = threading.Event()
        self._read_end, self._write_end = socket.socketpair()
        self._read_end.setblocking(False)
        self._write_end.setblocking(False)
        try:
            self._pubsub: Any = self._subscribe()
        except BaseException:
            self._read_end.close()
            self._write_end.close()
            raise
        self._thread = threading.Thread(
            target=self._run, name=f"sluicegate-wake-{channel}", daemon=True
        )
        self._thread.start()

    def fileno(self) -> int:
        return self._read_end.fileno()

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a wake-up; return whether one came."""
        readable, _, _ = select.select([self._read_end], [], [], max(timeout, 0.0))
        if readable:
            self.drain()
        return bool(readable)

    def drain(self) -> None:
        """Discard pending wake-ups, so the next wait blocks until a new one."""
        with contextlib.suppress(BlockingIOError, InterruptedError, OSError):
            while self._read_end.recv(256):
                pass

    def close(self) -> None:
        """Stop the thread, unsubscribe and release both sockets."""
        if self._closed.is_set():
            return
        self._closed.set()
        pubsub = self._pubsub
        if pubsub is not None and pubsub.connection is not None:
            # Shutting the socket down wakes the thread from its blocking read.
            with contextlib.suppress(Exception):
                pubsub.connection.disconnect()
        self._thread.join(READ_TIMEOUT + 1.0)
        self._read_end.close()
        self._write_end.close()

    def _subscribe(self) -> Any:
        pubsub = self._client.pubsub()
        try:
            pubsub.subscribe(self._channel)
            for _ in range(100):  # A new connection sends only the confirmation, but bound it.
                reply = pubsub.get_message(timeout=SUBSCRIBE_TIMEOUT)
                if reply is None:
                    raise redis.ConnectionError(
                        f"no subscription confirmation within {SUBSCRIBE_TIMEOUT:g}s"
                    )
                if reply["type"] == "subscribe":
                    return pubsub
            raise redis.ConnectionError("no subscription confirmation")
        except BaseException:
            with contextlib.suppress(Exception):
                pubsub.close()
            raise

    def _signal(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError, OSError):
            self._write_end.send(b"!")  # A full buffer means a wake-up is pending anyway.

    def _run(self) -> None:
        backoff = MIN_BACKOFF
        while not self._closed.is_set():
            try:
                if self._pubsub is None:
                    self._pubsub = self._subscribe()
                    logger.info(
                        "redis subscription restored address=%s channel=%s",
                        self._address,
                        self._channel,
                    )
                    backoff = MIN_BACKOFF
                    self._signal()
                reply = self._pubsub.get_message(timeout=READ_TIMEOUT)
                if reply is not None and reply["type"] == "message":
                    self._signal()
            except (redis.ConnectionError, redis.TimeoutError, OSError, ValueError) as exc:
                if self._closed.is_set():
                    break
                if self._pubsub is not None:
                    logger.warning(
                        "redis subscription lost, reconnecting address=%s channel=%s error=%s",
                        self._address,
                        self._channel,
                        str(exc)[:200],
                    )
                self._discard()
                self._closed.wait(random.uniform(backoff / 2, backoff))
                backoff = min(backoff * 2, MAX_BACKOFF)
        self._discard()

    def _discard(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                pubsub.close()
