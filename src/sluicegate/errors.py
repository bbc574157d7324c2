"""Every error sluicegate raises, rooted in :class:`SluicegateError`."""

from __future__ import annotations


class SluicegateError(Exception):
    """Base class of every error raised by sluicegate."""


class ConfigurationError(SluicegateError):
    """An option, URL or task definition is invalid."""


class UnsupportedBackend(ConfigurationError):
    """The URL scheme names no backend that this installation provides."""


class QueueFull(SluicegateError):
    """The queue is at its bound; the caller should retry after ``retry_after`` seconds.

    Parameters:
      queue: the queue that rejected the message.
      reason: ``"max_length"`` or ``"max_wait"``.
      limit: the bound that was reached (messages, or seconds for ``max_wait``).
      retry_after: seconds to wait before the next attempt, always above zero.
    """

    def __init__(self, queue: str, reason: str, limit: float, retry_after: float) -> None:
        self.queue = queue
        self.reason = reason
        self.limit = limit
        self.retry_after = retry_after
        super().__init__(
            f"queue {queue!r} is full ({reason}={limit:g}); retry after {retry_after:.2f}s"
        )

    def __repr__(self) -> str:
        return (
            f"QueueFull(queue={self.queue!r}, reason={self.reason!r}, "
            f"limit={self.limit!r}, retry_after={self.retry_after!r})"
        )


class BreakerOpen(SluicegateError):
    """The breaker ``name`` is open (or its half-open probes are taken), so the call did not run.

    Parameters:
      name: the breaker.
      retry_at: Unix time at which the breaker may admit a probe.
      retry_after: seconds from the rejection until ``retry_at``, at least zero.
    """

    def __init__(self, name: str, retry_at: float, retry_after: float) -> None:
        self.name = name
        self.retry_at = retry_at
        self.retry_after = retry_after
        super().__init__(f"breaker {name!r} is open; retry after {retry_after:.2f}s")

    def __repr__(self) -> str:
        return (
            f"BreakerOpen(name={self.name!r}, retry_at={self.retry_at!r}, "
            f"retry_after={self.retry_after!r})"
        )


class DeadlineExceeded(SluicegateError):
    """A job had not started by its task's ``deadline``; a worker failed it without running it.

    Workers record it by name in the job's error (``JobFailed.error_type``);
    it is not raised in the producer.
    """


class JobNotFound(SluicegateError, LookupError):
    """No job with this id exists: it was never enqueued, or its record expired."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id!r} not found (never enqueued, or its record expired)")


class JobFailed(SluicegateError):
    """The job ended ``failed``; carries the remote error type, message and traceback."""

    def __init__(
        self, job_id: str, error_type: str, error_message: str, traceback: str | None
    ) -> None:
        self.job_id = job_id
        self.error_type = error_type
        self.error_message = error_message
        self.traceback = traceback
        super().__init__(f"job {job_id} failed: {error_type}: {error_message}")


class JobCancelled(SluicegateError):
    """The job ended ``cancelled``, so it has no result."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id} was cancelled")


class JobTimeout(SluicegateError, TimeoutError):
    """Waiting for a job's result took longer than the caller's timeout."""

    def __init__(self, job_id: str, timeout: float, status: str) -> None:
        self.job_id = job_id
        self.timeout = timeout
        self.status = status
        super().__init__(f"job {job_id} still {status} after waiting {timeout:g}s")


class TaskTimeout(SluicegateError):
    """A task ran longer than its ``timeout``; recorded as the job's error."""


class EncodeError(SluicegateError, TypeError):
    """A value cannot be encoded so that it decodes to an equal value of the same type."""

    def __init__(self, path: str, value: object, reason: str) -> None:
        self.path = path
        self.value_type = type(value).__name__
        self.reason = reason
        super().__init__(f"cannot encode {path} ({self.value_type}): {reason}")


class DecodeError(SluicegateError, ValueError):
    """Message bytes are not a valid sluicegate envelope."""

    def __init__(self, reason: str, data: bytes = b"") -> None:
        self.reason = reason
        self.data = data
        super().__init__(f"cannot decode message: {reason}")


class PayloadTooLarge(SluicegateError, ValueError):
    """An encoded message or result exceeds the size limit."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        self.what = what
        self.size = size
        self.limit = limit
        super().__init__(f"{what} is {size} bytes, over the limit of {limit} bytes")


class InvalidArguments(SluicegateError, TypeError):
    """The arguments of an enqueue do not fit the task function's signature."""


class UnknownTask(SluicegateError, LookupError):
    """No task with this name is registered on the app."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no task named {name!r} is registered")


class StoreUnavailable(SluicegateError):
    """The broker or store did not respond within its retry window."""


class Unavailable(SluicegateError):
    """The HTTP API did not respond successfully before the client's deadline.

    Raised by ``sluicegate.Client`` after retrying connection errors,
    timeouts, 429 and 503 responses for ``max_elapsed`` seconds.
    """


class LeaseLost(SluicegateError):
    """Settling was rejected because the lease expired or another worker holds it now."""

    def __init__(self, message_id: str) -> None:
        self.message_id = message_id
        super().__init__(f"lease on message {message_id} expired or is held by another worker")


class Fail(Exception):
    """Raised by a task to fail its job at once, without spending retries."""


class Retry(Exception):
    """Raised by a task to ask for a retry, optionally after ``delay`` seconds."""

    def __init__(self, message: str = "retry requested", delay: float | None = None) -> None:
        self.delay = delay
        super().__init__(message)


class Cancelled(BaseException):
    """Raised inside a task whose job was cancelled.

    It derives from ``BaseException`` like ``asyncio.CancelledError``, so a task's
    own ``except Exception`` does not swallow the cancellation.
    """
