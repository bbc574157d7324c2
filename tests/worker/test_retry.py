"""Retries on a real worker: backoff then success, non-retryable errors, exact attempt counts."""

from __future__ import annotations

import itertools

import pytest

from .support import MakeApp, StartWorker, on_both_drivers

#: Sync thread-pool tasks, which both drivers run.
SYNC_SOURCE = """
import sys
import threading

FAST = Backoff(base=0.05, cap=0.1)


class NeedsTwo(Exception):
    \"\"\"An exception whose constructor needs two arguments but keeps only one in args.\"\"\"

    def __init__(self, first, second):
        super().__init__(first)
        self.second = second


class HoldsLock(Exception):
    \"\"\"An exception that holds an object that cannot be pickled.\"\"\"

    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


class Halt(BaseException):
    \"\"\"A BaseException that is neither an Exception, SystemExit nor KeyboardInterrupt.\"\"\"


@app.task(retries=5, backoff=FAST)
def flaky() -> int:
    attempt = job_context().attempt
    mark("run", attempt)
    if attempt < 3:
        raise RuntimeError(f"attempt {attempt} failed")
    return attempt


@app.task(retries=5, backoff=FAST, retry_on=(ConnectionError,))
def wrong_error() -> None:
    mark("run")
    raise ValueError("not a connection error")


@app.task(retries=5, backoff=FAST)
def gives_up() -> None:
    mark("run")
    raise Fail("permanent: bad input")


@app.task(retries=3, backoff=Backoff(base=0.3, jitter="none"))
def always_fails() -> None:
    mark("run", job_context().attempt)
    raise RuntimeError("still down")


@app.task(retries=0)
def bad_raise() -> None:
    mark("run")
    raise NeedsTwo("a", "b")


@app.task(retries=0)
def bad_lock() -> None:
    mark("run")
    raise HoldsLock("holding a lock")


@app.task(retries=2, backoff=FAST)
def bad_retry() -> None:
    mark("run")
    raise Retry("try again", delay=0.05) from NeedsTwo("c", "d")


@app.task(retries=2, backoff=FAST)
def interrupted() -> None:
    mark("run")
    raise KeyboardInterrupt("raised by the task")


@app.task(retries=2, backoff=FAST)
def exits() -> None:
    mark("run")
    sys.exit(3)


@app.task(retries=1, backoff=FAST)
def halts() -> None:
    mark("run")
    raise Halt("halted")


@app.task
def quick() -> str:
    return "done"
"""

#: Process-pool tasks, which only Worker runs.
PROCESS_SOURCE = """
@app.task(retries=0, pool="process")
def bad_raise_process() -> None:
    mark("run")
    raise NeedsTwo("a", "b")


@app.task(retries=0, pool="process")
def bad_lock_process() -> None:
    mark("run")
    raise HoldsLock("holding a lock")
"""

SOURCE = SYNC_SOURCE + PROCESS_SOURCE


@on_both_drivers
def test_retry_then_success(make_app: MakeApp, start_worker: StartWorker) -> None:
    module = make_app(SYNC_SOURCE)
    start_worker(module)
    job = module.task("flaky").enqueue()
    record = module.wait_final([job.id], timeout=30)[job.id]

    assert record.state.value == "succeeded"
    assert record.attempts == 3
    assert job.result(timeout=1) == 3
    assert [event.fields for event in module.events("run", job.id)] == [("1",), ("2",), ("3",)]


@on_both_drivers
@pytest.mark.parametrize(
    ("task", "error_type", "message"),
    [
        pytest.param("wrong_error", "ValueError", "not a connection error", id="retry_on"),
        pytest.param("gives_up", "sluicegate.errors.Fail", "permanent: bad input", id="fail"),
    ],
)
def test_non_retryable_fails_at_once(
    make_app: MakeApp, start_worker: StartWorker, task: str, error_type: str, message: str
) -> None:
    module = make_app(SYNC_SOURCE)
    start_worker(module)
    job = module.task(task).enqueue()
    record = module.wait_final([job.id], timeout=30)[job.id]

    assert record.state.value == "failed"
    assert record.attempts == 1
    assert record.error is not None
    assert record.error.type == error_type
    assert record.error.message == message
    assert len(module.events("run", job.id)) == 1
    assert module.app.queue("default").dead_letters() == []


@on_both_drivers
def test_retries_exhausted_exactly(make_app: MakeApp, start_worker: StartWorker) -> None:
    module = make_app(SYNC_SOURCE)
    start_worker(module, "--concurrency", "4")
    jobs = [module.task("always_fails").enqueue() for _ in range(5)]
    records = module.wait_final([job.id for job in jobs], timeout=60)

    dead = {letter.message_id: letter for letter in module.app.queue("default").dead_letters()}
    for job in jobs:
        record = records[job.id]
        assert record.state.value == "failed"
        assert record.attempts == 4
        assert record.error is not None
        assert record.error.message == "still down"
        runs = module.events("run", job.id)
        assert [event.fields for event in runs] == [("1",), ("2",), ("3",), ("4",)]
        gaps = [later.time - earlier.time for earlier, later in itertools.pairwise(runs)]
        assert min(gaps) >= 0.3
        assert "retries exhausted after 4 attempts" in dead[job.id].reason


#: Attempts, error type and message recorded for each task that raises an odd exception.
ODD_EXCEPTIONS = {
    "bad_raise": (1, "NeedsTwo", "a"),
    "bad_lock": (1, "HoldsLock", "holding a lock"),
    "bad_retry": (3, "sluicegate.errors.Retry", "try again"),
    "bad_raise_process": (1, "NeedsTwo", "a"),
    "bad_lock_process": (1, "HoldsLock", "holding a lock"),
}

#: (source, tasks, worker_loop): the sync tasks on both drivers, the process tasks on Worker.
ODD_EXCEPTION_CASES = [
    pytest.param(SYNC_SOURCE, ["bad_raise", "bad_lock", "bad_retry"], "asyncio", id="asyncio"),
    pytest.param(SYNC_SOURCE, ["bad_raise", "bad_lock", "bad_retry"], "threads", id="threads"),
    pytest.param(SOURCE, ["bad_raise_process", "bad_lock_process"], "auto", id="process"),
]


@pytest.mark.parametrize(
    ("source", "names", "worker_loop"), ODD_EXCEPTION_CASES, indirect=["worker_loop"]
)
def test_odd_exceptions_recorded(
    make_app: MakeApp, start_worker: StartWorker, source: str, names: list[str]
) -> None:
    module = make_app(source)
    worker = start_worker(module, "--concurrency", "4", "--processes", "1")
    jobs = {name: module.task(name).enqueue() for name in names}
    quick = [module.task("quick").enqueue() for _ in range(100)]
    records = module.wait_final([job.id for job in [*jobs.values(), *quick]], timeout=60)

    for name in names:
        attempts, error_type, message = ODD_EXCEPTIONS[name]
        record = records[jobs[name].id]
        assert record.state.value == "failed", name
        assert record.attempts == attempts, name
        assert record.error is not None, name
        assert record.error.type.endswith(error_type), name
        assert record.error.message == message, name
    if "bad_retry" in jobs:
        assert records[jobs["bad_retry"].id].error.traceback is not None
        assert "NeedsTwo" in (records[jobs["bad_retry"].id].error.traceback or "")
    assert {records[job.id].state.value for job in quick} == {"succeeded"}
    assert worker.alive


@on_both_drivers
def test_base_exceptions_end_the_job(make_app: MakeApp, start_worker: StartWorker) -> None:
    module = make_app(SYNC_SOURCE)
    worker = start_worker(module, "--concurrency", "4")
    jobs = {name: module.task(name).enqueue() for name in ("interrupted", "exits", "halts")}
    quick = [module.task("quick").enqueue() for _ in range(20)]
    records = module.wait_final([job.id for job in [*jobs.values(), *quick]], timeout=60)

    # KeyboardInterrupt, SystemExit and a BaseException of the task's own end the attempt,
    # not the worker, and the default retry_on covers none of them, so the job fails at once.
    expected = {
        "interrupted": ("KeyboardInterrupt", "raised by the task"),
        "exits": ("SystemExit", "3"),
        "halts": ("Halt", "halted"),
    }
    for name, (error_type, message) in expected.items():
        record = records[jobs[name].id]
        assert record.state.value == "failed", name
        assert record.attempts == 1, name
        assert record.error is not None, name
        assert record.error.type.endswith(error_type), name
        assert record.error.message == message, name
        assert record.error.traceback is not None, name
        assert len(module.events("run", jobs[name].id)) == 1, name
    assert {records[job.id].state.value for job in quick} == {"succeeded"}
    assert worker.alive
    assert "worker stopped" not in worker.log()
