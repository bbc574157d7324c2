"""The interface the app and the worker use: a broker and a store in one object.

A backend that is both (SQLite now) implements the combined steps
atomically: ``enqueue_jobs`` creates the records and the messages in one
transaction, and ``exchange`` settles finished deliveries and reserves new
ones in one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from sluicegate.broker import Broker, EnqueueResult, QueueBounds, Settlement
from sluicegate.message import Delivery
from sluicegate.store import NewJob, Store


class Waiter(Protocol):
    """A wake-up subscription: a file descriptor that turns readable on a signal."""

    def fileno(self) -> int: ...

    def wait(self, timeout: float) -> bool: ...

    def drain(self) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class TransactionalEnqueue(Protocol):
    """A backend that can enqueue inside a transaction the caller owns (PostgreSQL)."""

    def enqueue_jobs_in(
        self, connection: Any, jobs: Sequence[NewJob], bounds: QueueBounds
    ) -> list[EnqueueResult]:
        """Create jobs on ``connection``; they exist if and only if its transaction commits."""
        ...


@runtime_checkable
class Migratable(Protocol):
    """A backend whose schema is created and upgraded only on request (PostgreSQL)."""

    def schema_version(self) -> tuple[int, int]:
        """Return the schema version in the database and the version this code needs."""
        ...

    def migrate(self) -> list[int]:
        """Apply the missing migrations; return the versions applied."""
        ...


class Backend(Broker, Store, Protocol):
    """Broker and store together, with the atomic steps that need both."""

    def enqueue_jobs(self, jobs: Sequence[NewJob], bounds: QueueBounds) -> list[EnqueueResult]:
        """Create job records and their messages in one queue, all or none.

        A job whose idempotency key exists already is not created; its
        result names the existing job. Raises ``QueueFull`` if the new
        messages do not fit under ``bounds``.
        """
        ...

    def exchange(
        self,
        settlements: Sequence[Settlement],
        queues: Sequence[str],
        limit: int,
        lease: float,
        worker: str,
    ) -> tuple[list[bool], list[Delivery]]:
        """Settle finished deliveries and reserve up to ``limit`` new ones in one atomic step.

        Settling checks the fence and the lease: a delivery whose lease
        expired, or that a newer delivery replaced, is not settled, and its
        job update is dropped. Reserving first makes due delayed messages
        ready and gives expired leases back to their queues, then leases up
        to ``limit`` messages, highest priority first and FIFO within one,
        and marks their jobs ``running``. Returns, for each settlement,
        whether it took effect, and the new deliveries.
        """
        ...

    def listener(self) -> Waiter:
        """Subscribe to "messages may be ready" signals."""
        ...

    def result_listener(self) -> Waiter:
        """Subscribe to "a job reached a final state" signals."""
        ...

    def next_due(self) -> float | None:
        """Return the earliest delayed ready time or lease expiry, as Unix time."""
        ...

    def length(self, queue: str) -> int:
        """Return the number of live (not dead) messages in ``queue``."""
        ...

    def ping(self) -> None:
        """Raise if the backend cannot be reached."""
        ...

    def close(self) -> None:
        """Release connections and other resources."""
        ...
