"""Job handles: follow one job's status and fetch its result."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from sluicegate import codec
from sluicegate._offload import to_thread
from sluicegate.errors import JobCancelled, JobFailed, JobNotFound, JobTimeout
from sluicegate.store import JobRecord, JobState

if TYPE_CHECKING:
    from sluicegate.app import App

R = TypeVar("R")

#: Maximum pause, in seconds, between two reads of a job's record while waiting.
#: Workers signal finished jobs, so this only bounds the delay of a lost signal.
MAX_POLL_INTERVAL = 0.5


class Job(Generic[R]):
    """A handle on one job. ``status`` reads the store each time it is accessed."""

    def __init__(self, app: App, job_id: str, record: JobRecord | None = None) -> None:
        self.app = app
        self.id = job_id
        self._record = record

    def __repr__(self) -> str:
        if self._record is None:
            return f"Job({self.id!r})"
        return f"Job({self.id!r}, state={self._record.state.value!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def record(self) -> JobRecord:
        """The record as of the last ``refresh`` (or the first read)."""
        if self._record is None:
            self.refresh()
        assert self._record is not None
        return self._record

    @property
    def status(self) -> JobState:
        """The job's current state, read from the store now."""
        return self.refresh().state

    @property
    def attempts(self) -> int:
        """How many attempts have started, as of the last ``refresh``."""
        return self.record.attempts

    def refresh(self) -> JobRecord:
        """Read the job's record again; raise ``JobNotFound`` if it no longer exists."""
        record = self.app.backend.get_job(self.id)
        if record is None:
            raise JobNotFound(self.id)
        self._record = record
        return record

    async def arefresh(self) -> JobRecord:
        """Read the job's record again without blocking the event loop."""
        return await to_thread(self.refresh)

    def wait(self, timeout: float | None = None) -> JobRecord:
        """Block until the job is final; raise ``JobTimeout`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        listener = self.app.backend.result_listener()
        try:
            interval = 0.005
            while True:
                record = self.refresh()
                if record.state.is_final:
                    return record
                remaining = _remaining(deadline)
                if remaining is not None and remaining <= 0:
                    raise JobTimeout(self.id, timeout or 0.0, record.state.value)
                pause = interval if remaining is None else min(interval, remaining)
                listener.wait(pause)
                interval = min(interval * 2, MAX_POLL_INTERVAL)
        finally:
            listener.close()

    async def await_final(self, timeout: float | None = None) -> JobRecord:
        """Wait until the job is final without blocking the event loop; see :meth:`wait`."""
        import asyncio  # Here, so that sync callers never load it.

        deadline = None if timeout is None else time.monotonic() + timeout
        loop = asyncio.get_running_loop()
        listener = self.app.backend.result_listener()
        woken = asyncio.Event()
        loop.add_reader(listener.fileno(), woken.set)
        try:
            interval = 0.005
            while True:
                record = await self.arefresh()
                if record.state.is_final:
                    return record
                remaining = _remaining(deadline)
                if remaining is not None and remaining <= 0:
                    raise JobTimeout(self.id, timeout or 0.0, record.state.value)
                pause = interval if remaining is None else min(interval, remaining)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), pause)
                woken.clear()
                listener.drain()
                interval = min(interval * 2, MAX_POLL_INTERVAL)
        finally:
            loop.remove_reader(listener.fileno())
            listener.close()

    def result(self, timeout: float | None = None) -> R:
        """Wait for the job and return its result.

        Raises ``JobFailed`` (with the remote error type, message and
        traceback) if it failed, ``JobCancelled`` if it was cancelled,
        ``JobTimeout`` after ``timeout`` seconds and ``JobNotFound`` for an
        unknown or expired id.
        """
        return cast(R, self._outcome(self.wait(timeout)))

    async def aresult(self, timeout: float | None = None) -> R:
        """Wait for the job without blocking the event loop; see :meth:`result`."""
        return cast(R, self._outcome(await self.await_final(timeout)))

    def cancel(self) -> JobState:
        """Cancel the job; return its state after the request.

        A scheduled or queued job is cancelled at once and never runs. A
        running job gets a cancel request: an async task is cancelled, a
        sync task sees ``job_context().cancelled`` turn true.
        """
        record = self.app.backend.request_cancel(self.id, self.app.retention)
        if record is None:
            raise JobNotFound(self.id)
        self._record = record
        return record.state

    async def acancel(self) -> JobState:
        """Cancel the job without blocking the event loop; see :meth:`cancel`."""
        return await to_thread(self.cancel)

    def _outcome(self, record: JobRecord) -> Any:
        if record.state is JobState.SUCCEEDED:
            return None if record.result is None else codec.decode(record.result)
        if record.state is JobState.CANCELLED:
            raise JobCancelled(self.id)
        error = record.error
        raise JobFailed(
            self.id,
            error.type if error else "UnknownError",
            error.message if error else "no error recorded",
            error.traceback if error else None,
        )


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()
