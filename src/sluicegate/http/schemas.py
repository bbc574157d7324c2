"""Request and response bodies of the HTTP API, as pydantic models.

Times in responses are ISO 8601 strings in UTC. Durations are seconds.
Job arguments and results use the codec's JSON form: plain JSON values as
themselves, other types as tagged objects ``{"$t": TAG, "v": VALUE}`` (see
:mod:`sluicegate.codec`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt, model_validator

from sluicegate.breaker import BreakerSnapshot
from sluicegate.breaker_state import MAX_DURATION, Phase
from sluicegate.broker import DeadLetter, QueueStats
from sluicegate.documents import iso, job_document
from sluicegate.store import JobRecord, JobState
from sluicegate.task import MAX_DELAY


class EnqueueRequest(BaseModel):
    """The body of ``POST /v1/queues/{queue}/jobs``."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1, max_length=500, description="Registered task name.")
    args: list[Any] = Field(default_factory=list, description="Positional arguments.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments.")
    delay: float | None = Field(
        default=None, ge=0, le=MAX_DELAY, allow_inf_nan=False, description="Seconds to wait."
    )
    eta: AwareDatetime | None = Field(default=None, description="Earliest start, with a zone.")
    priority: StrictInt | None = Field(default=None, ge=-1000, le=1000, description="Higher first.")
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="A replay with a known key returns the existing job (200).",
    )
    callback_url: str | None = Field(
        default=None,
        min_length=1,
        max_length=2000,
        description="URL that receives the final job record by a signed POST.",
    )

    @model_validator(mode="after")
    def _delay_or_eta(self) -> EnqueueRequest:
        if self.delay is not None and self.eta is not None:
            raise ValueError("pass either delay or eta, not both")
        return self


class ErrorBody(BaseModel):
    """The error that ended an attempt."""

    type: str
    message: str
    traceback: str | None = None


class JobBody(BaseModel):
    """A job's record.

    ``version`` grows at every change of the record; the event stream uses
    it for event ids. ``result`` is the return value in the codec's JSON form.
    """

    id: str
    task: str
    queue: str
    state: JobState
    attempts: int
    created_at: dt.datetime
    eta: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    expires_at: dt.datetime | None = None
    result: Any = None
    error: ErrorBody | None = None
    cancel_requested: bool = False
    progress: float | None = None
    progress_message: str | None = None
    idempotency_key: str | None = None
    note: str | None = None
    version: int = 0


class QueueBody(BaseModel):
    """A snapshot of one queue: counts, the age of its head, rates and bounds.

    ``ready`` is the queue depth. Rates are messages per second over the last
    30 to 60 seconds. ``max_length`` and ``max_wait`` are the bounds this
    server enforces at enqueue.
    """

    name: str
    ready: int
    delayed: int
    running: int
    dead: int
    oldest_ready_age: float | None
    enqueue_rate: float
    completion_rate: float
    max_length: int
    max_wait: float | None


class DeadLetterBody(BaseModel):
    """A dead-lettered message. ``body`` is the message as text (invalid UTF-8 replaced)."""

    message_id: str
    queue: str
    reason: str
    dead_at: dt.datetime
    delivery_count: int
    body: str


class CountBody(BaseModel):
    """How many messages an operation changed."""

    count: int


class QueueFullBody(BaseModel):
    """The body of a 503 from a full queue."""

    detail: str
    queue: str
    reason: str = Field(description="max_length or max_wait")
    limit: float = Field(description="The bound: messages, or seconds for max_wait.")
    retry_after: float = Field(description="Seconds to wait, as estimated by the broker.")


class BreakerBody(BaseModel):
    """A circuit breaker's state as read from the store.

    ``declared`` is false for a breaker that has a stored state but that the
    served app does not declare. Its ``window`` and ``reset_timeout`` are then
    the default options, and ``failure_rate`` counts over that window.
    """

    name: str
    state: Phase
    declared: bool
    failure_rate: float = Field(description="Failures / calls in the window (0 without calls).")
    calls: int = Field(description="Calls counted in the window.")
    failures: int = Field(description="Failures counted in the window.")
    window: float = Field(description="Length of the counting window, in seconds.")
    opened_at: dt.datetime | None = Field(
        description="When the breaker last opened: null while closed."
    )
    next_probe_at: dt.datetime | None = Field(
        description="When it admits a probe call: null while closed."
    )
    reset_timeout: float = Field(description="Seconds it stays open before probing.")


class ForceOpenRequest(BaseModel):
    """The optional body of ``POST /v1/breakers/{name}/force-open``."""

    model_config = ConfigDict(extra="forbid")

    duration: float | None = Field(
        default=None,
        gt=0,
        le=MAX_DURATION,
        allow_inf_nan=False,
        strict=True,  # true is not one second
        description="Seconds to stay open before probing; default: the reset timeout.",
    )


class DetailBody(BaseModel):
    """A plain error body."""

    detail: str


class HealthBody(BaseModel):
    """The body of ``/healthz`` and ``/readyz``."""

    status: str


def job_body(record: JobRecord) -> dict[str, Any]:
    """Return a job record as a JSON-ready dict matching :class:`JobBody`."""
    return job_document(record)


def queue_body(stats: QueueStats, max_length: int, max_wait: float | None) -> dict[str, Any]:
    """Return queue stats as a dict matching :class:`QueueBody`, with the enforced bounds."""
    return {
        "name": stats.name,
        "ready": stats.ready,
        "delayed": stats.delayed,
        "running": stats.running,
        "dead": stats.dead,
        "oldest_ready_age": stats.oldest_ready_age,
        "enqueue_rate": stats.enqueue_rate,
        "completion_rate": stats.completion_rate,
        "max_length": max_length,
        "max_wait": max_wait,
    }


def breaker_body(snapshot: BreakerSnapshot, declared: bool) -> dict[str, Any]:
    """Return a breaker snapshot as a dict matching :class:`BreakerBody`."""
    return {
        "name": snapshot.name,
        "state": snapshot.state.value,
        "declared": declared,
        "failure_rate": snapshot.failure_rate,
        "calls": snapshot.calls,
        "failures": snapshot.failures,
        "window": snapshot.window,
        "opened_at": iso(snapshot.opened_at),
        "next_probe_at": iso(snapshot.next_probe_at),
        "reset_timeout": snapshot.reset_timeout,
    }


def dead_letter_body(letter: DeadLetter) -> dict[str, Any]:
    """Return a dead letter as a dict matching :class:`DeadLetterBody`."""
    return {
        "message_id": letter.message_id,
        "queue": letter.queue,
        "reason": letter.reason,
        "dead_at": iso(letter.dead_at),
        "delivery_count": letter.delivery_count,
        "body": letter.body.decode("utf-8", errors="replace"),
    }
