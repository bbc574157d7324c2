"""The plain message-queue level: publish payloads and consume them, without tasks."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sluicegate._offload import to_thread
from sluicegate.broker import Action, DeadLetter, QueueStats, Settlement
from sluicegate.errors import DecodeError, LeaseLost, SluicegateError
from sluicegate.message import Delivery, OutgoingMessage, decode_payload, encode_payload, new_id
from sluicegate.task import ready_time

if TYPE_CHECKING:
    import datetime as dt

    from sluicegate.app import App
    from sluicegate.backends.base import Backend

logger = logging.getLogger(__name__)

#: Deliveries after which a nacked message goes to the dead-letter queue.
DEFAULT_MAX_DELIVERIES = 5


class Message:
    """One delivered message. Settle it with ``ack`` or ``nack`` before its lease ends."""

    def __init__(self, queue: Queue, delivery: Delivery, payload: Any, max_deliveries: int) -> None:
        self.queue = queue
        self.delivery = delivery
        self.payload = payload
        self.max_deliveries = max_deliveries
        self.settled = False

    @property
    def id(self) -> str:
        return self.delivery.message_id

    @property
    def delivery_count(self) -> int:
        """How many times this message has been delivered, this delivery included."""
        return self.delivery.delivery_count

    def __repr__(self) -> str:
        return f"Message({self.id!r}, queue={self.queue.name!r}, deliveries={self.delivery_count})"

    def ack(self) -> None:
        """Remove the message: it was handled. Raises ``LeaseLost`` if the lease is gone."""
        self._settle(Settlement(self.delivery, Action.ACK))

    def nack(self, delay: float | None = None) -> None:
        """Give the message back, to be delivered again after ``delay`` seconds.

        Past ``max_deliveries`` deliveries it goes to the dead-letter queue.
        """
        if self.delivery_count >= self.max_deliveries:
            reason = f"nacked after {self.delivery_count} deliveries"
            self._settle(Settlement(self.delivery, Action.DEAD, reason=reason))
            return
        self._settle(Settlement(self.delivery, Action.RETRY, delay=max(delay or 0.0, 0.0)))

    def dead_letter(self, reason: str) -> None:
        """Move the message to the dead-letter queue with ``reason``."""
        self._settle(Settlement(self.delivery, Action.DEAD, reason=reason))

    def extend(self, seconds: float) -> None:
        """Extend the lease to ``seconds`` from now; raise ``LeaseLost`` if it is gone."""
        if not 0 < seconds <= 24 * 3600:
            raise ValueError(
                f"lease extension must be between 0 and 86400 seconds, got {seconds!r}"
            )
        (held,) = self.queue.app.backend.extend([self.delivery], seconds)
        if not held:
            raise LeaseLost(self.id)

    def _settle(self, settlement: Settlement) -> None:
        if self.settled:
            raise SluicegateError(f"message {self.id} is settled already")
        (ok,) = self.queue.app.backend.settle([settlement])
        if not ok:
            raise LeaseLost(self.id)
        self.settled = True


class Queue:
    """A named, bounded queue of an app: publish, consume, inspect."""

    def __init__(self, app: App, name: str) -> None:
        self.app = app
        self.name = name

    def __repr__(self) -> str:
        return f"Queue({self.name!r})"

    def publish(
        self,
        payload: Any,
        delay: float | dt.timedelta | None = None,
        priority: int = 0,
        eta: dt.datetime | None = None,
    ) -> str:
        """Durably add ``payload`` to the queue and return the message id.

        Raises ``QueueFull`` at the queue's bound, ``EncodeError`` or
        ``PayloadTooLarge`` for a payload that cannot be carried.
        """
        now = time.time()
        message_id = new_id()
        body = encode_payload(message_id, payload, self.app.max_message_size)
        message = OutgoingMessage(
            message_id, self.name, body, priority, ready_time(now, delay, eta), now
        )
        self.app.backend.publish([message], self.app.bounds(self.name))
        return message_id

    async def apublish(
        self, payload: Any, delay: float | dt.timedelta | None = None, priority: int = 0
    ) -> str:
        """Publish without blocking the event loop; see :meth:`publish`."""
        return await to_thread(self.publish, payload, delay, priority)

    def consume(
        self,
        *,
        lease: float | None = None,
        timeout: float | None = None,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        worker: str = "consumer",
    ) -> Iterator[Message]:
        """Yield messages as they become ready, one at a time, each under a lease.

        Stops after ``timeout`` seconds without a message (never, if None).
        A message that cannot be decoded goes to the dead-letter queue with
        the reason and is not yielded.
        """
        backend = self.app.backend
        lease = self.app.lease if lease is None else lease
        listener = backend.listener()
        try:
            idle_since = time.monotonic()
            while True:
                deliveries = backend.reserve([self.name], 1, lease, worker)
                if deliveries:
                    idle_since = time.monotonic()
                    message = self._open(deliveries[0], max_deliveries)
                    if message is not None:
                        yield message
                    continue
                waited = time.monotonic() - idle_since
                if timeout is not None and waited >= timeout:
                    return
                pause = 1.0 if timeout is None else min(1.0, timeout - waited)
                listener.wait(_until_due(backend, pause))
        finally:
            listener.close()

    def _open(self, delivery: Delivery, max_deliveries: int) -> Message | None:
        try:
            payload = decode_payload(delivery.body)
        except DecodeError as exc:
            logger.error(
                "undecodable message dead-lettered message_id=%s queue=%s reason=%s",
                delivery.message_id,
                self.name,
                exc.reason,
            )
            reason = f"undecodable: {exc.reason}"
            self.app.backend.settle([Settlement(delivery, Action.DEAD, reason=reason)])
            return None
        return Message(self, delivery, payload, max_deliveries)

    def stats(self) -> QueueStats:
        """Return a snapshot of the queue's depth, bounds and recent rates."""
        found = self.app.backend.stats(self.name)
        if found:
            return found[0]
        bounds = self.app.bounds(self.name)
        return QueueStats(self.name, 0, 0, 0, 0, None, bounds.max_length, bounds.max_wait)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """List this queue's dead letters, oldest first."""
        return list(self.app.backend.dead_letters(self.name, limit))

    def retry_dead(self, message_ids: list[str] | None = None) -> int:
        """Put dead letters back on the queue (all of them if no ids are given)."""
        return int(self.app.backend.retry_dead(self.name, message_ids))

    def purge_dead(self, message_ids: list[str] | None = None) -> int:
        """Delete dead letters (all of them if no ids are given); return how many."""
        return int(self.app.backend.purge_dead(self.name, message_ids))


def _until_due(backend: Backend, pause: float) -> float:
    due = backend.next_due()
    if due is None:
        return pause
    return max(min(pause, due - time.time()), 0.001)
