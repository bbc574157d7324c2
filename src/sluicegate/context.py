"""The running job's context: its id, attempt, cancellation and progress."""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sluicegate.errors import Cancelled, SluicegateError


@dataclass(eq=False)
class JobContext:
    """The job that a task is running: its ids and attempt, cancellation and progress.

    ``cancelled`` turns true once the job's cancellation was requested; a
    task that checks it and stops (or raises ``sluicegate.Cancelled``) ends
    the job ``cancelled``. ``progress`` records a fraction between 0 and 1
    and an optional message in the job's record.
    """

    job_id: str
    task: str
    queue: str
    attempt: int
    _report_progress: Callable[[float, str | None], None]
    _poll_cancel: Callable[[], bool] | None = None
    _cancel_requested: bool = False
    _cancel_seen: bool = False
    _poll_interval: float = 0.5
    _polled_at: float = field(default=0.0)

    @property
    def cancelled(self) -> bool:
        """Whether cancellation of this job was requested."""
        if not self._cancel_requested and self._poll_cancel is not None:
            now = time.monotonic()
            if now - self._polled_at >= self._poll_interval:
                self._polled_at = now
                self._cancel_requested = self._poll_cancel()
        if self._cancel_requested:
            self._cancel_seen = True
        return self._cancel_requested

    def raise_if_cancelled(self) -> None:
        """Raise ``sluicegate.Cancelled`` if cancellation was requested."""
        if self.cancelled:
            raise Cancelled(f"job {self.job_id} cancelled")

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Record progress: ``fraction`` from 0.0 to 1.0 and an optional message."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"progress fraction must be between 0 and 1, got {fraction!r}")
        self._report_progress(fraction, message)

    def request_cancel(self) -> None:
        """Mark cancellation as requested; called by the worker, not by tasks."""
        self._cancel_requested = True


_current: contextvars.ContextVar[JobContext] = contextvars.ContextVar("sluicegate_job")


def job_context() -> JobContext:
    """Return the context of the job that the current task runs for.

    Raises ``SluicegateError`` outside a task run by a worker.
    """
    try:
        return _current.get()
    except LookupError:
        raise SluicegateError(
            "job_context() called outside a job; it works only inside a task run by a worker"
        ) from None


def set_job_context(context: JobContext) -> contextvars.Token[JobContext]:
    """Make ``context`` current; return a token for :func:`reset_job_context`."""
    return _current.set(context)


def reset_job_context(token: contextvars.Token[JobContext]) -> None:
    _current.reset(token)
