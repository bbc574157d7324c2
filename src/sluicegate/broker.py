"""The broker protocol: bounded queues, leases with fencing, settling, dead letters."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sluicegate.message import Delivery, OutgoingMessage
from sluicegate.store import JobUpdate

#: Default bound on the number of messages in a queue (ready, delayed and reserved).
DEFAULT_MAX_LENGTH = 100_000


@dataclass(frozen=True, slots=True)
class QueueBounds:
    """A queue's admission bounds.

    ``max_length`` counts every message in the queue that is not dead:
    ready, delayed and reserved. ``max_wait`` is the age in seconds of the
    oldest ready message past which the queue rejects new messages.
    With ``declared`` false the bounds only admit this enqueue, as for a
    webhook delivery, so the backend keeps the bounds it stores for the
    queue's stats unchanged.
    """

    max_length: int = DEFAULT_MAX_LENGTH
    max_wait: float | None = None
    declared: bool = True


class Action(enum.Enum):
    """The action that settling applies to a delivered message."""

    ACK = "ack"  # done: remove the message
    RETRY = "retry"  # deliver again after ``delay`` seconds
    RELEASE = "release"  # give back now, as if never delivered (shutdown)
    DEFER = "defer"  # give back unrun, due after ``delay`` seconds; the delivery is not counted
    DEAD = "dead"  # move to the dead-letter queue with ``reason``


@dataclass(frozen=True, slots=True)
class Settlement:
    """How to settle one delivery, and the job record change that goes with it."""

    delivery: Delivery
    action: Action
    job: JobUpdate | None = None
    delay: float = 0.0
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class QueueStats:
    """A snapshot of one queue.

    ``oldest_ready_age`` is in seconds. The rates are messages per second
    over the last 30 to 60 seconds; completions count acks and dead letters.
    """

    name: str
    ready: int
    delayed: int
    running: int
    dead: int
    oldest_ready_age: float | None
    max_length: int
    max_wait: float | None
    enqueue_rate: float = 0.0
    completion_rate: float = 0.0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-lettered message with the reason it was dead-lettered."""

    message_id: str
    queue: str
    body: bytes
    reason: str
    dead_at: float
    delivery_count: int


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    """Outcome of enqueueing one job: its id and whether it was created now.

    ``created`` is false when the idempotency key matched an existing job,
    whose id is returned instead.
    """

    job_id: str
    created: bool


class Broker(Protocol):
    """Bounded queues with leases. Every method is safe across threads and processes."""

    def publish(self, messages: Sequence[OutgoingMessage], bounds: QueueBounds) -> None:
        """Durably add messages to one queue, all or none.

        Raises ``QueueFull`` when the messages do not fit under ``bounds``;
        the check and the insert are one atomic step.
        """
        ...

    def reserve(
        self, queues: Sequence[str], limit: int, lease: float, worker: str
    ) -> list[Delivery]:
        """Lease up to ``limit`` ready messages, highest priority first, FIFO within one."""
        ...

    def settle(self, settlements: Sequence[Settlement]) -> list[bool]:
        """Settle deliveries and write their job updates; stale leases are rejected.

        Returns, for each settlement, whether it took effect. A delivery whose
        lease expired or was taken over by a newer delivery is not settled.
        """
        ...

    def extend(self, deliveries: Sequence[Delivery], lease: float) -> list[bool]:
        """Extend leases to ``lease`` seconds from now; false where the lease was lost."""
        ...

    def stats(self, queue: str | None = None) -> list[QueueStats]:
        """Return stats for one queue, or every known queue."""
        ...

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """List a queue's dead letters, oldest first."""
        ...

    def retry_dead(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        """Put dead letters back on their queue (all if ``message_ids`` is None)."""
        ...

    def purge_dead(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        """Delete dead letters (all if ``message_ids`` is None); return how many."""
        ...

    def wait_for_messages(self, queues: Sequence[str], timeout: float) -> None:
        """Block until a message may be ready on ``queues`` or ``timeout`` seconds pass."""
        ...
