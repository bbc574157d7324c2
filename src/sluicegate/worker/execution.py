"""Running one task call and classifying how it ended, in any pool."""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any

from sluicegate import codec
from sluicegate.context import JobContext, reset_job_context, set_job_context
from sluicegate.errors import Cancelled, EncodeError, Fail, PayloadTooLarge, Retry, TaskTimeout
from sluicegate.message import TaskCall, check_size
from sluicegate.store import ErrorInfo
from sluicegate.task import Task

#: Maximum traceback text kept in a job's record, in characters.
MAX_TRACEBACK_CHARS = 20_000


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """How one attempt ended.

    ``kind`` is ``"ok"`` (``result`` contains the encoded return value),
    ``"error"`` (``error`` describes it; ``retryable`` whether the task's
    ``retry_on`` allows a retry; ``retry_delay`` a delay the task asked for
    with ``Retry``) or ``"cancelled"``. ``cancel_seen`` is true when the
    task read ``job_context().cancelled`` as true. ``breaker_failure`` is
    True when the error counts as a failure of the task's breaker, else None.
    """

    kind: str
    result: bytes | None = None
    error: ErrorInfo | None = None
    retryable: bool = False
    retry_delay: float | None = None
    cancel_seen: bool = False
    breaker_failure: bool | None = None


def run_sync(
    task: Task[Any, Any], call: TaskCall, context: JobContext, max_size: int
) -> RunOutcome:
    """Run a sync task function with ``context`` as the job context.

    A job whose cancellation was requested while it waited for a thread
    does not run.
    """
    if context._cancel_requested:
        return RunOutcome("cancelled")
    token = set_job_context(context)
    try:
        value = task.fn(*call.args, **call.kwargs)
    except Cancelled:
        return RunOutcome("cancelled", cancel_seen=True)
    except BaseException as exc:
        # Whatever the task raises (SystemExit, KeyboardInterrupt, a BaseException of its
        # own) ends the attempt, not the worker. retry_on decides, and its default is Exception.
        return classify_error(task, exc, context)
    finally:
        reset_job_context(token)
    return encode_result(value, context, max_size)


async def run_async(
    task: Task[Any, Any], call: TaskCall, context: JobContext, max_size: int
) -> RunOutcome:
    """Run an async task function on the running loop with ``context`` set."""
    import asyncio  # Here, so that the thread-only worker never loads it.

    token = set_job_context(context)
    try:
        value = await task.fn(*call.args, **call.kwargs)
    except Cancelled:
        return RunOutcome("cancelled", cancel_seen=True)
    except asyncio.CancelledError:
        raise  # A timeout or a cancel request: the worker decides the outcome.
    except BaseException as exc:
        # As in run_sync: whatever the task raises ends the attempt, not the worker.
        return classify_error(task, exc, context)
    finally:
        reset_job_context(token)
    return encode_result(value, context, max_size)


def encode_result(value: Any, context: JobContext, max_size: int) -> RunOutcome:
    """Encode a return value; a value that cannot be stored fails the job, unretried."""
    try:
        result = codec.encode(value)
        check_size("result", len(result), max_size)
    except (EncodeError, PayloadTooLarge) as exc:
        error = ErrorInfo(type(exc).__name__, f"the task's return value was rejected: {exc}")
        return RunOutcome("error", error=error, cancel_seen=context._cancel_seen)
    return RunOutcome("ok", result=result, cancel_seen=context._cancel_seen)


def classify_error(task: Task[Any, Any], exc: BaseException, context: JobContext) -> RunOutcome:
    """Turn an exception raised by a task into an outcome, deciding if it is retryable."""
    error = describe_error(exc)
    failure = breaker_failure(task, type(exc))
    if isinstance(exc, Retry):
        return RunOutcome(
            "error", error=error, retryable=True, retry_delay=exc.delay, breaker_failure=failure
        )
    retryable = not isinstance(exc, Fail) and isinstance(exc, task.options.retry_on)
    return RunOutcome(
        "error",
        error=error,
        retryable=retryable,
        cancel_seen=context._cancel_seen,
        breaker_failure=failure,
    )


def breaker_failure(task: Task[Any, Any], kind: type[BaseException]) -> bool | None:
    """Return True if an exception of ``kind`` counts against the task's breaker, else None."""
    name = task.options.breaker
    if name is None:
        return None
    return task.app.breaker(name).failure_of(kind)


def describe_error(exc: BaseException) -> ErrorInfo:
    """Return the type, message and traceback of ``exc`` for a job's record."""
    text = "".join(traceback.format_exception(exc))
    if len(text) > MAX_TRACEBACK_CHARS:
        text = "...\n" + text[-MAX_TRACEBACK_CHARS:]
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    return ErrorInfo(name, str(exc), text)


def timeout_outcome(task: Task[Any, Any], timeout: float, how: str) -> RunOutcome:
    """Return the outcome of an attempt stopped by its timeout."""
    message = f"task {task.name} exceeded its timeout of {timeout:g}s; {how}"
    error = ErrorInfo("sluicegate.errors.TaskTimeout", message)
    retryable = issubclass(TaskTimeout, task.options.retry_on)
    failure = breaker_failure(task, TaskTimeout)
    return RunOutcome("error", error=error, retryable=retryable, breaker_failure=failure)
