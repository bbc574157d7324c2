"""The store protocol: job records, results, cancel requests and retention.

A backend that is both broker and store (SQLite, Redis, PostgreSQL) writes a
job's outcome and settles its message in one atomic step, so a message is
acked only once the outcome is in the store.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sluicegate.message import OutgoingMessage


class JobState(enum.StrEnum):
    """The states of a job; an unknown id has no state, it is not found."""

    SCHEDULED = "scheduled"  # waiting for its eta or delay
    QUEUED = "queued"  # ready, waiting for a worker
    RUNNING = "running"  # reserved by a worker, which runs it
    RETRYING = "retrying"  # failed an attempt, waiting for its backoff
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """The error that ended an attempt: exception type, message and traceback."""

    type: str
    message: str
    traceback: str | None = None


@dataclass(frozen=True, slots=True)
class JobRecord:
    """The record a store keeps for one job. Times are Unix seconds.

    ``version`` starts at 1 and grows by one at every write to the record
    (state change, progress, cancel request), so a reader can tell whether
    the record changed since it last looked. Backends without it report 0.
    """

    id: str
    task: str
    queue: str
    state: JobState
    attempts: int
    created_at: float
    eta: float
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    result: bytes | None = None
    error: ErrorInfo | None = None
    cancel_requested: bool = False
    progress: float | None = None
    progress_message: str | None = None
    idempotency_key: str | None = None
    note: str | None = None
    version: int = 0


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job to create, with the message that carries it."""

    message: OutgoingMessage
    task: str
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class JobUpdate:
    """The store half of a settlement: the job's new state and what comes with it.

    ``retention`` is how many seconds a final record is kept. ``count_attempt``
    is false when a job is given back at shutdown, so that attempt is not spent.
    ``note`` None keeps the record's note, and an empty string clears it.
    """

    state: JobState
    result: bytes | None = None
    error: ErrorInfo | None = None
    note: str | None = None
    retention: float = 7 * 24 * 3600.0
    count_attempt: bool = True


class Store(Protocol):
    """Job records. Every method is safe to call from many threads and processes."""

    def get_job(self, job_id: str) -> JobRecord | None:
        """Return the job's record, or ``None`` if it never existed or expired."""
        ...

    def get_jobs(self, job_ids: Sequence[str]) -> list[JobRecord]:
        """Return the records that exist among ``job_ids``, in any order."""
        ...

    def request_cancel(self, job_id: str, retention: float) -> JobRecord | None:
        """Cancel a job, and return its record after the change (``None`` if unknown).

        A scheduled, queued or retrying job becomes ``cancelled`` at once and
        its message is removed. A running job gets ``cancel_requested`` set,
        which the worker honours at its next check. A final job is unchanged.
        A record cancelled now is kept ``retention`` seconds.
        """
        ...

    def cancel_requests(self, job_ids: Sequence[str]) -> set[str]:
        """Return the ids among ``job_ids`` whose cancellation was requested."""
        ...

    def set_progress(self, job_id: str, fence: int, fraction: float, message: str | None) -> bool:
        """Record a running job's progress; return false if the lease is no longer held."""
        ...

    def purge_expired(self, now: float) -> int:
        """Delete final job records whose retention ended; return how many."""
        ...

    # -- shared state for schedulers, breakers and rate limits

    def acquire_lock(self, name: str, holder: str, ttl: float) -> bool:
        """Take or renew the lock ``name`` for ``holder`` for ``ttl`` seconds.

        Returns whether ``holder`` holds the lock now. A lock whose holder
        did not renew it within its ttl is free to take.
        """
        ...

    def release_lock(self, name: str, holder: str) -> bool:
        """Release the lock if ``holder`` holds it; return whether it did."""
        ...

    def lock_holder(self, name: str) -> tuple[str, float] | None:
        """Return the holder of an unexpired lock and its expiry (Unix time), or None."""
        ...

    def get_value(self, key: str) -> bytes | None:
        """Return the value stored under ``key``, or None."""
        ...

    def compare_and_set(self, key: str, expected: bytes | None, value: bytes | None) -> bool:
        """Atomically replace the value of ``key`` if it equals ``expected``.

        ``expected=None`` means "no value yet"; ``value=None`` deletes the key.
        Returns whether the swap happened. Callers build atomic read-modify-
        write steps (breaker transitions, last fire times) on it.
        """
        ...

    def keys(self, prefix: str) -> list[str]:
        """Return the keys that start with ``prefix``, sorted."""
        ...
