"""Tasks: registered functions with their options, and enqueueing calls of them."""

from __future__ import annotations

import datetime as dt
import inspect
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypeVar

from sluicegate._offload import to_thread
from sluicegate.errors import ConfigurationError, InvalidArguments
from sluicegate.message import OutgoingMessage, encode_task_call, new_id
from sluicegate.ratelimit import Rate
from sluicegate.retry import Backoff
from sluicegate.store import NewJob

if TYPE_CHECKING:
    from sluicegate.app import App
    from sluicegate.job import Job

P = ParamSpec("P")
R = TypeVar("R")

Pool = Literal["thread", "process", "async"]

#: One call for ``enqueue_many``: positional arguments and keyword arguments.
Call = tuple[Sequence[Any], Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """A task's options. Durations are in seconds.

    ``retries`` counts retries after the first attempt, so a job runs at
    most ``retries + 1`` times. ``retry_on`` lists the exception types worth
    a retry; any other exception fails the job at once. A job deferred by
    its ``breaker`` or ``rate_limit`` spends no attempt; one that has not
    started ``deadline`` seconds after its enqueue fails instead of running.
    """

    name: str
    queue: str
    retries: int
    backoff: Backoff
    timeout: float | None
    pool: Pool
    priority: int
    retry_on: tuple[type[BaseException], ...]
    lease: float
    retention: float
    breaker: str | None = None  # the shared breaker each attempt passes
    rate_limit: Rate | None = None  # attempts per period, across every worker
    deadline: float | None = None  # seconds after enqueue by which an attempt must start

    @property
    def max_attempts(self) -> int:
        return self.retries + 1


class Task(Generic[P, R]):
    """A function registered on an app; call ``enqueue`` to run it on a worker.

    Calling the task object directly runs the function in the caller's process.
    """

    def __init__(self, app: App, fn: Callable[P, Any], options: TaskOptions) -> None:
        self.app = app
        self.fn = fn
        self.options = options
        self.signature = inspect.signature(fn)
        self.is_async = inspect.iscoroutinefunction(fn)
        self._positional_range = _positional_range(self.signature)

    @property
    def name(self) -> str:
        return self.options.name

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Task({self.name!r}, queue={self.options.queue!r})"

    def enqueue(
        self,
        *args: Any,
        delay: float | dt.timedelta | None = None,
        eta: dt.datetime | None = None,
        priority: int | None = None,
        idempotency_key: str | None = None,
        retries: int | None = None,
        callback_url: str | None = None,
        connection: Any = None,
        **kwargs: Any,
    ) -> Job[R]:
        """Enqueue one call and return its job once the message is durable.

        ``retries`` overrides the task's retries for this job. ``callback_url``
        receives the job's final record by a signed POST (see
        :mod:`sluicegate.webhooks`). The option names (``delay``, ``eta``,
        ``priority``, ``idempotency_key``, ``retries``, ``callback_url``,
        ``connection``) are not passed to the function; a function with a
        parameter of one of these names gets it through ``enqueue_many``.

        ``connection`` (PostgreSQL backends only) is the caller's psycopg 3
        connection: the job is created inside its current transaction, so it
        exists, and workers hear of it, only if that transaction commits.

        Raises ``TypeError`` if the arguments do not fit the function's
        signature, ``EncodeError`` or ``PayloadTooLarge`` for arguments that
        cannot be carried, and ``QueueFull`` when the queue is at its bound.
        A known ``idempotency_key`` returns the existing job instead.
        """
        new = self.prepare(
            args, kwargs, delay, eta, priority, idempotency_key, retries, callback_url
        )
        return self.app._submit(self, [new], connection)[0]

    async def aenqueue(
        self,
        *args: Any,
        delay: float | dt.timedelta | None = None,
        eta: dt.datetime | None = None,
        priority: int | None = None,
        idempotency_key: str | None = None,
        retries: int | None = None,
        callback_url: str | None = None,
        **kwargs: Any,
    ) -> Job[R]:
        """Enqueue one call without blocking the event loop; see :meth:`enqueue`."""
        new = self.prepare(
            args, kwargs, delay, eta, priority, idempotency_key, retries, callback_url
        )
        jobs = await to_thread(self.app._submit, self, [new])
        return jobs[0]

    def enqueue_many(
        self,
        calls: Iterable[Call],
        *,
        delay: float | dt.timedelta | None = None,
        eta: dt.datetime | None = None,
        priority: int | None = None,
        connection: Any = None,
    ) -> list[Job[R]]:
        """Enqueue many ``(args, kwargs)`` calls in one transaction, all or none.

        The whole batch is admitted or rejected with ``QueueFull`` against the
        queue's bound; it is never split. ``connection`` works as in :meth:`enqueue`.
        """
        prepared = [
            self.prepare(tuple(args), dict(kwargs), delay, eta, priority, None)
            for args, kwargs in calls
        ]
        return self.app._submit(self, prepared, connection)

    async def aenqueue_many(
        self,
        calls: Iterable[Call],
        *,
        delay: float | dt.timedelta | None = None,
        eta: dt.datetime | None = None,
        priority: int | None = None,
    ) -> list[Job[R]]:
        """Enqueue many calls without blocking the event loop; see :meth:`enqueue_many`."""
        calls = list(calls)
        return await to_thread(self.enqueue_many, calls, delay=delay, eta=eta, priority=priority)

    def prepare(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        delay: float | dt.timedelta | None,
        eta: dt.datetime | None,
        priority: int | None,
        idempotency_key: str | None,
        retries: int | None = None,
        callback_url: str | None = None,
    ) -> NewJob:
        """Check and encode one call; return the job to create."""
        self.check_arguments(args, kwargs)
        if retries is not None and (type(retries) is not int or retries < 0):
            raise ConfigurationError(f"retries must be a non-negative integer, got {retries!r}")
        now = time.time()
        job_id = new_id()
        if callback_url is not None and not callback_url.startswith(("http://", "https://")):
            raise ConfigurationError(f"callback_url must be an http(s) URL, got {callback_url!r}")
        body = encode_task_call(
            job_id, self.name, args, kwargs, self.app.max_message_size, retries, callback_url
        )
        message = OutgoingMessage(
            id=job_id,
            queue=self.options.queue,
            body=body,
            priority=self.options.priority if priority is None else check_priority(priority),
            ready_at=ready_time(now, delay, eta),
            enqueued_at=now,
        )
        return NewJob(message, self.name, _check_key(idempotency_key))

    def check_arguments(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """Raise ``InvalidArguments`` (a ``TypeError``) if the call does not fit the signature."""
        bounds = self._positional_range
        if bounds is not None and not kwargs and bounds[0] <= len(args) <= bounds[1]:
            return  # Only plain positional parameters, and the count fits: nothing to bind.
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidArguments(
                f"invalid arguments for task {self.name}{self.signature}: {exc}"
            ) from None


def _positional_range(signature: inspect.Signature) -> tuple[int, int] | None:
    """Return the (min, max) positional argument counts of a plain signature, else None."""
    plain = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    parameters = list(signature.parameters.values())
    if any(p.kind not in plain for p in parameters):
        return None
    required = sum(1 for p in parameters if p.default is inspect.Parameter.empty)
    return required, len(parameters)


#: Maximum delay, in seconds, that enqueue accepts: 10 years. An eta or delay
#: beyond it is far more likely a unit mistake than a plan.
MAX_DELAY = 10 * 365.25 * 24 * 3600


def ready_time(now: float, delay: float | dt.timedelta | None, eta: dt.datetime | None) -> float:
    """Return the Unix time a message becomes ready; an ``eta`` in the past means now."""
    if delay is not None and eta is not None:
        raise ConfigurationError("pass either delay or eta, not both")
    if eta is not None:
        if not isinstance(eta, dt.datetime):
            raise ConfigurationError(f"eta must be a datetime, got {type(eta).__name__}")
        if eta.tzinfo is None or eta.tzinfo.utcoffset(eta) is None:
            raise ConfigurationError(
                f"eta {eta.isoformat()} has no time zone; pass an aware datetime, "
                "e.g. datetime.now(timezone.utc) + timedelta(minutes=5)"
            )
        ready_at = eta.timestamp()
        if ready_at - now > MAX_DELAY:
            raise ConfigurationError(f"eta {eta.isoformat()} is more than 10 years away")
        return max(ready_at, now)
    if delay is None:
        return now
    if isinstance(delay, dt.timedelta):
        seconds = delay.total_seconds()
    elif isinstance(delay, int | float) and not isinstance(delay, bool):
        seconds = float(delay)
    else:
        raise ConfigurationError(
            f"delay must be a number of seconds or a timedelta, got {type(delay).__name__}"
        )
    if not 0 <= seconds <= MAX_DELAY:
        raise ConfigurationError(
            f"delay must be between 0 and {MAX_DELAY:g} seconds (10 years), got {delay!r}"
        )
    return now + seconds


def check_priority(priority: int) -> int:
    """Return ``priority`` if it is an int from -1000 to 1000; raise ``ConfigurationError``."""
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise ConfigurationError(f"priority must be an int, got {type(priority).__name__}")
    if not -1000 <= priority <= 1000:
        raise ConfigurationError(f"priority must be between -1000 and 1000, got {priority}")
    return priority


def _check_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or not key or len(key) > 255:
        raise ConfigurationError(
            f"idempotency_key must be a non-empty string of at most 255 characters, got {key!r}"
        )
    return key
