"""The task and job API on a real App and SQLite file, with no worker running.

Where a test needs a job to finish, it plays the worker's part through the
backend: reserve the message, then settle it with the job's outcome.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import pytest

from sluicegate import (
    App,
    ConfigurationError,
    EncodeError,
    Job,
    JobCancelled,
    JobFailed,
    JobNotFound,
    JobState,
    JobTimeout,
    PayloadTooLarge,
    QueueFull,
    UnknownTask,
    UnsupportedBackend,
    codec,
)
from sluicegate.broker import Action, Settlement
from sluicegate.store import ErrorInfo, JobUpdate

#: Upper bound, in seconds, for a call that should return at once.
PROMPT = 5.0

UNKNOWN_ID = "00000000-0000-7000-8000-000000000000"


def register_add(app: App, queue: str = "default") -> Any:
    @app.task(queue=queue, name="tests.add")
    def add(x: int, y: int = 0) -> int:
        return x + y

    return add


def finish(app: App, queue: str, update: JobUpdate) -> str:
    """Reserve the next message of ``queue`` and settle it with ``update``; return its id."""
    (delivery,) = app.backend.reserve([queue], 1, 30.0, "test")
    action = Action.ACK if update.state.is_final else Action.RETRY
    (settled,) = app.backend.settle([Settlement(delivery, action, update)])
    assert settled is True
    return delivery.message_id


def ready_count(app: App, queue: str = "default") -> int:
    return app.queue(queue).stats().ready


# -- arguments and payloads


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((), {}), ((1, 2, 3), {}), ((1,), {"z": 2}), ((1,), {"x": 2})],
    ids=["missing", "too-many", "unknown-keyword", "duplicate"],
)
def test_enqueue_wrong_arguments(app: App, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    add = register_add(app)

    with pytest.raises(TypeError) as caught:
        add.enqueue(*args, **kwargs)

    assert "tests.add" in str(caught.value)
    assert ready_count(app) == 0


def test_enqueue_many_wrong_arguments(app: App) -> None:
    add = register_add(app)

    with pytest.raises(TypeError):
        add.enqueue_many([((1,), {}), ((), {})])

    assert ready_count(app) == 0


def test_enqueue_fitting_arguments(app: App) -> None:
    add = register_add(app)

    add.enqueue(1)
    add.enqueue(1, 2)
    add.enqueue(x=1, y=2)

    assert ready_count(app) == 3


def test_enqueue_payload_too_large(db_url: str) -> None:
    app = App(db_url, max_message_size=1000)
    try:
        add = register_add(app)

        with pytest.raises(PayloadTooLarge) as caught:
            add.enqueue("x" * 2000)

        assert caught.value.limit == 1000
        assert caught.value.size > 2000
        assert str(caught.value.size) in str(caught.value)
        assert "1000" in str(caught.value)
        assert ready_count(app) == 0
    finally:
        app.close()


def test_enqueue_unencodable(app: App) -> None:
    add = register_add(app)

    with pytest.raises(EncodeError) as caught:
        add.enqueue(1, y=bytearray(b"x"))

    assert caught.value.path == "kwargs['y']"
    assert ready_count(app) == 0


# -- bounds


def test_enqueue_queue_full(app: App) -> None:
    app.queue("small", max_length=2)
    add = register_add(app, queue="small")
    add.enqueue(1)
    add.enqueue(2)

    with pytest.raises(QueueFull) as caught:
        add.enqueue(3)

    assert caught.value.queue == "small"
    assert caught.value.retry_after > 0
    assert app.backend.length("small") == 2


def test_enqueue_many_all_or_none(app: App) -> None:
    app.queue("small", max_length=3)
    add = register_add(app, queue="small")
    add.enqueue(1)

    with pytest.raises(QueueFull):
        add.enqueue_many([((n,), {}) for n in range(3)])

    assert app.backend.length("small") == 1


def test_enqueue_many_fits(app: App) -> None:
    app.queue("small", max_length=3)
    add = register_add(app, queue="small")

    jobs = add.enqueue_many([((n,), {}) for n in range(3)])

    assert len({job.id for job in jobs}) == 3
    assert app.backend.length("small") == 3


# -- eta, delay and status


def test_eta_naive_rejected(app: App) -> None:
    add = register_add(app)

    with pytest.raises(ConfigurationError) as caught:
        add.enqueue(1, eta=dt.datetime.now() + dt.timedelta(minutes=5))

    assert "time zone" in str(caught.value)
    assert ready_count(app) == 0


def test_eta_past_ready_now(app: App) -> None:
    add = register_add(app)

    job = add.enqueue(1, eta=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    deliveries = app.backend.reserve(["default"], 1, 30.0, "test")

    assert [d.message_id for d in deliveries] == [job.id]


def test_eta_future_scheduled(app: App) -> None:
    add = register_add(app)
    eta = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)

    job = add.enqueue(1, eta=eta)

    assert job.status is JobState.SCHEDULED
    assert job.record.eta == pytest.approx(eta.timestamp())
    assert app.backend.reserve(["default"], 1, 30.0, "test") == []


def test_delay_and_eta_rejected(app: App) -> None:
    add = register_add(app)
    eta = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)

    with pytest.raises(ConfigurationError):
        add.enqueue(1, delay=10, eta=eta)

    assert app.backend.length("default") == 0


def test_negative_delay_rejected(app: App) -> None:
    add = register_add(app)

    with pytest.raises(ConfigurationError):
        add.enqueue(1, delay=-1)


def test_status_scheduled(app: App) -> None:
    add = register_add(app)

    job = add.enqueue(1, delay=3600)

    assert job.status is JobState.SCHEDULED


def test_status_queued(app: App) -> None:
    add = register_add(app)

    job = add.enqueue(1)

    assert job.status is JobState.QUEUED


def test_status_running(app: App) -> None:
    add = register_add(app)
    job = add.enqueue(1)

    app.backend.reserve(["default"], 1, 30.0, "test")

    assert job.status is JobState.RUNNING
    assert job.attempts == 1


def test_priority_overrides(app: App) -> None:
    add = register_add(app)
    low = add.enqueue(1)
    high = add.enqueue(2, priority=5)

    deliveries = app.backend.reserve(["default"], 2, 30.0, "test")

    assert [d.message_id for d in deliveries] == [high.id, low.id]


# -- idempotency


def test_idempotency_same_job(app: App) -> None:
    add = register_add(app)

    first = add.enqueue(1, idempotency_key="order-7")
    second = add.enqueue(2, idempotency_key="order-7")

    assert second.id == first.id
    assert app.backend.length("default") == 1


def test_idempotency_other_key(app: App) -> None:
    add = register_add(app)

    first = add.enqueue(1, idempotency_key="order-7")
    second = add.enqueue(1, idempotency_key="order-8")

    assert second.id != first.id


# -- lookups, results and cancellation


def test_job_unknown_id(app: App) -> None:
    with pytest.raises(JobNotFound) as caught:
        app.job(UNKNOWN_ID)

    assert caught.value.job_id == UNKNOWN_ID


def test_result_unknown_prompt(app: App) -> None:
    job: Job[Any] = Job(app, UNKNOWN_ID)
    started = time.monotonic()

    with pytest.raises(JobNotFound):
        job.result(timeout=30)

    assert time.monotonic() - started < PROMPT


def test_wait_unknown_prompt(app: App) -> None:
    job: Job[Any] = Job(app, UNKNOWN_ID)
    started = time.monotonic()

    with pytest.raises(JobNotFound):
        job.wait(timeout=30)

    assert time.monotonic() - started < PROMPT


def test_job_lookup(app: App) -> None:
    add = register_add(app)
    job = add.enqueue(1)

    found = app.job(job.id)

    assert found == job
    assert found.record.task == "tests.add"
    assert found.record.queue == "default"


def test_result_timeout(app: App) -> None:
    add = register_add(app)
    job = add.enqueue(1)

    with pytest.raises(JobTimeout) as caught:
        job.result(timeout=0.05)

    assert caught.value.status == "queued"


def test_result_succeeded(app: App) -> None:
    add = register_add(app)
    job = add.enqueue(1)

    finish(app, "default", JobUpdate(JobState.SUCCEEDED, result=codec.encode({"sum": 1})))

    assert job.result(timeout=PROMPT) == {"sum": 1}
    assert job.status is JobState.SUCCEEDED


def test_result_failed(app: App) -> None:
    add = register_add(app)
    job = add.enqueue(1)
    error = ErrorInfo("ValueError", "bad input", "Traceback (most recent call last): ...")

    finish(app, "default", JobUpdate(JobState.FAILED, error=error))

    with pytest.raises(JobFailed) as caught:
        job.result(timeout=PROMPT)
    assert caught.value.error_type == "ValueError"
    assert caught.value.error_message == "bad input"
    assert caught.value.traceback == error.traceback


def test_cancel_queued(app: App) -> None:
    add = register_add(app)
    job = add.enqueue(1)

    state = job.cancel()

    assert state is JobState.CANCELLED
    assert job.status is JobState.CANCELLED
    assert app.backend.reserve(["default"], 1, 30.0, "test") == []
    with pytest.raises(JobCancelled):
        job.result(timeout=PROMPT)


def test_cancel_scheduled(app: App) -> None:
    add = register_add(app)
    job = add.enqueue(1, delay=3600)

    assert job.cancel() is JobState.CANCELLED
    assert app.backend.length("default") == 0


def test_cancel_running(app: App) -> None:
    add = register_add(app)
    job = add.enqueue(1)
    app.backend.reserve(["default"], 1, 30.0, "test")

    state = job.cancel()

    assert state is JobState.RUNNING
    assert job.record.cancel_requested is True


def test_cancel_unknown(app: App) -> None:
    job: Job[Any] = Job(app, UNKNOWN_ID)

    with pytest.raises(JobNotFound):
        job.cancel()


# -- tasks by name, and the app's URL


def test_enqueue_by_name(app: App) -> None:
    register_add(app)

    job = app.enqueue("tests.add", 1, y=2)

    assert job.status is JobState.QUEUED
    assert job.record.task == "tests.add"


def test_enqueue_unknown_name(app: App) -> None:
    with pytest.raises(UnknownTask) as caught:
        app.enqueue("tests.missing", 1)

    assert "tests.missing" in str(caught.value)


def test_duplicate_task_name(app: App) -> None:
    register_add(app)

    with pytest.raises(ConfigurationError):
        register_add(app)


def test_task_default_name(app: App) -> None:
    @app.task
    def greet(name: str) -> str:
        return f"hello {name}"

    assert greet.name == f"{__name__}.test_task_default_name.<locals>.greet"
    assert greet("x") == "hello x"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql://localhost/jobs", "mysql"),
        ("jobs.db", "sqlite:///"),
    ],
)
def test_unsupported_url(url: str, expected: str) -> None:
    with pytest.raises(UnsupportedBackend) as caught:
        App(url)

    assert expected in str(caught.value)
    assert "sqlite:///" in str(caught.value)


def test_unsupported_url_redacted() -> None:
    with pytest.raises(UnsupportedBackend) as caught:
        App("mysql://admin:hunter2@localhost/jobs")

    assert "hunter2" not in str(caught.value)
    assert "admin" in str(caught.value)


def test_unsupported_is_configuration() -> None:
    with pytest.raises(ConfigurationError):
        App("amqp://localhost")


# -- the async API


def test_async_enqueue_and_result(app: App) -> None:
    add = register_add(app)

    async def scenario() -> tuple[JobState, Any, Any]:
        job = await add.aenqueue(1, y=2)
        found = await app.ajob(job.id)
        record = await found.arefresh()
        waiter = asyncio.create_task(found.aresult(timeout=30))
        update = JobUpdate(JobState.SUCCEEDED, result=codec.encode(3))
        await asyncio.to_thread(finish, app, "default", update)
        result = await asyncio.wait_for(waiter, PROMPT)
        return record.state, found.id == job.id, result

    state, same_id, result = asyncio.run(scenario())

    assert state is JobState.QUEUED
    assert same_id is True
    assert result == 3


def test_async_result_timeout(app: App) -> None:
    add = register_add(app)

    async def scenario() -> None:
        job = await add.aenqueue(1)
        await job.aresult(timeout=0.05)

    with pytest.raises(JobTimeout):
        asyncio.run(scenario())


def test_async_unknown_id(app: App) -> None:
    with pytest.raises(JobNotFound):
        asyncio.run(app.ajob(UNKNOWN_ID))


def test_async_cancel(app: App) -> None:
    register_add(app)

    async def scenario() -> JobState:
        job = await app.aenqueue("tests.add", 1)
        state = await job.acancel()
        with pytest.raises(JobCancelled):
            await job.aresult(timeout=PROMPT)
        return state

    assert asyncio.run(scenario()) is JobState.CANCELLED


def test_async_enqueue_many(app: App) -> None:
    add = register_add(app)

    async def scenario() -> list[Job[Any]]:
        return await add.aenqueue_many([((1,), {}), ((2,), {"y": 3})])

    jobs = asyncio.run(scenario())

    assert len(jobs) == 2
    assert [job.status for job in jobs] == [JobState.QUEUED, JobState.QUEUED]


@pytest.mark.parametrize("delay", [float("inf"), 1e300, -1, "5", True])
def test_delay_rejected_out_of_range(app: App, delay: object) -> None:
    task = app.task(lambda: None, name="delay_check")
    with pytest.raises(ConfigurationError):
        task.enqueue(delay=delay)  # type: ignore[arg-type]


def test_batch_over_bound_is_rejected(app: App) -> None:
    app.queue("tiny", max_length=3)
    task = app.task(lambda x: x, name="tiny_task", queue="tiny")
    with pytest.raises(ConfigurationError, match="smaller batches"):
        task.enqueue_many([((i,), {}) for i in range(4)])
    assert app.queue("tiny").stats().ready == 0


@pytest.mark.parametrize(
    "url", ["sqlite:///:memory:", "sqlite:////tmp/x.db?mode=ro", "sqlite:////tmp/"]
)
def test_sqlite_url_without_file_rejected(url: str) -> None:
    with pytest.raises(ConfigurationError):
        App(url)


@pytest.mark.parametrize("retry_on", ["ValueError", (ValueError, "x"), 3])
def test_retry_on_must_be_exceptions(app: App, retry_on: object) -> None:
    with pytest.raises(ConfigurationError, match="retry_on"):
        app.task(lambda: None, name="retry_on_check", retry_on=retry_on)  # type: ignore[arg-type]
