"""Wake-up for the Redis backend: one pub/sub subscription per channel, shared by its waiters.

The scripts PUBLISH on ``{P}:wake`` when messages become ready and on
``{P}:results`` when a job becomes final. A :class:`ChannelHub` holds one
subscription on its own connection and a thread that blocks reading it (the
server pushes each message, so nothing polls). Each message wakes every
:class:`~sluicegate.backends._pipe_waiter.PipeWaiter` subscribed to the hub,
so a ``Job.result()`` call costs a pipe, not a connection, a subscription and
a thread of its own.

A waiter's pipe, not the Redis socket, is what a caller watches, because the
Redis socket is replaced when the connection is re-established: the worker's
``loop.add_reader(listener.fileno())`` stays valid across a server restart.
After each reconnect the thread wakes every waiter too, since a message
published while it was away is lost and the caller must look for work.

The hub subscribes through the backend's route, so on a cluster it listens on
the master of the prefix's slot. After losing that connection it takes the
route's current client again, which is the new master after a failover. A cluster forwards
every ``PUBLISH`` to all its nodes, so any node would receive the messages.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
from typing import Any

import redis

from sluicegate.backends._pipe_waiter import PipeWaiter
from sluicegate.backends._redis_route import Route

logger = logging.getLogger(__name__)

#: Seconds the subscriber thread blocks in one read; it checks for close() in between.
READ_TIMEOUT = 1.0

#: Seconds to wait for the server to confirm a subscription.
SUBSCRIBE_TIMEOUT = 10.0

#: Bounds, in seconds, of the backoff between two reconnect attempts.
MIN_BACKOFF = 0.05
MAX_BACKOFF = 2.0


class ChannelHub:
    """One subscription to one channel and its reading thread, shared by many waiters.

    Nothing connects until the first :meth:`subscribe`, which subscribes on
    the calling thread and raises ``redis.ConnectionError`` if that fails.
    """

    def __init__(self, route: Route, channel: str, address: str) -> None:
        self._route = route
        self._channel = channel
        self._address = address
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._waiters: set[PipeWaiter] = set()
        self._pubsub: Any = None
        #: The client whose connection ``_pubsub`` uses, reported to the route when it fails.
        self._source: redis.Redis | None = None
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def subscribe(self, client: redis.Redis) -> PipeWaiter:
        """Return a waiter woken by each message on the channel; the caller closes it.

        ``client`` is the route's current client, used if the hub has no
        subscription yet.

        The channel is subscribed when this returns, so a message published
        after that wakes the waiter (or, if the connection drops first, the
        wake-up that follows the reconnect does).
        """
        with self._lock:
            if self._closed.is_set():
                raise RuntimeError(f"the subscription to {self._channel} is closed")
            if self._pid != os.getpid():
                # A forked child has the parent's state but not its thread.
                self._pid, self._thread, self._pubsub = os.getpid(), None, None
                self._waiters.clear()
            if self._thread is None:
                self._pubsub = self._subscribe(client)
                self._thread = threading.Thread(
                    target=self._run, name=f"sluicegate-sub-{self._channel}", daemon=True
                )
                self._thread.start()
            waiter = PipeWaiter(self, self._channel)
            self._waiters.add(waiter)
        return waiter

    def unsubscribe(self, waiter: PipeWaiter) -> None:
        with self._lock:
            self._waiters.discard(waiter)

    def close(self) -> None:
        """Stop the thread and close the subscription; waiters stay open until closed."""
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
            pubsub, thread = self._pubsub, self._thread
        if pubsub is not None and pubsub.connection is not None:
            # Shutting the socket down wakes the thread from its blocking read.
            with contextlib.suppress(Exception):
                pubsub.connection.disconnect()
        if thread is not None:
            thread.join(READ_TIMEOUT + 1.0)
        self._discard()

    def _subscribe(self, client: redis.Redis) -> Any:
        self._source = client
        pubsub = client.pubsub()
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

    def _wake_all(self) -> None:
        with self._lock:
            waiters = list(self._waiters)
        for waiter in waiters:
            waiter.wake()

    def _run(self) -> None:
        backoff = MIN_BACKOFF
        while not self._closed.is_set():
            try:
                if self._pubsub is None:
                    self._pubsub = self._subscribe(self._route.client())
                    logger.info(
                        "redis subscription restored address=%s channel=%s",
                        self._address,
                        self._channel,
                    )
                    backoff = MIN_BACKOFF
                    self._wake_all()
                reply = self._pubsub.get_message(timeout=READ_TIMEOUT)
                if reply is not None and reply["type"] == "message":
                    self._wake_all()
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
                self._route.failed(self._source)
                self._discard()
                self._closed.wait(random.uniform(backoff / 2, backoff))
                backoff = min(backoff * 2, MAX_BACKOFF)
        self._discard()

    def _discard(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                pubsub.close()
