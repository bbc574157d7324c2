"""Task timeouts in each pool: async cancelled, process killed, thread result discarded."""

from __future__ import annotations

import psutil

from .support import MakeApp, StartWorker, on_both_drivers, wait_until

#: Sync thread-pool tasks, which both drivers run.
SYNC_SOURCE = """
@app.task(timeout=0.5, retries=0)
def stuck_thread(gate: str) -> str:
    mark("start")
    wait_for_file(gate)
    mark("end")
    return "late"


@app.task
def quick() -> str:
    mark("start")
    return "done"
"""

#: Async and process-pool tasks, which only Worker runs.
OTHER_POOLS_SOURCE = """
@app.task(timeout=0.5, retries=0)
async def stuck_async() -> str:
    mark("start")
    await asyncio.sleep(60)
    mark("end")
    return "late"


@app.task(pool="process", timeout=1.0, retries=0)
def stuck_process() -> str:
    mark("start")
    time.sleep(60)
    mark("end")
    return "late"


@app.task(pool="process")
def quick_process() -> str:
    mark("start")
    return "done"
"""

SOURCE = SYNC_SOURCE + OTHER_POOLS_SOURCE

TIMEOUT_ERROR = "sluicegate.errors.TaskTimeout"


def test_timeout_cancels_async(make_app: MakeApp, start_worker: StartWorker) -> None:
    module = make_app(SOURCE)
    start_worker(module)
    job = module.task("stuck_async").enqueue()
    record = module.wait_final([job.id], timeout=30)[job.id]

    assert record.state.value == "failed"
    assert record.attempts == 1
    assert record.error is not None
    assert record.error.type == TIMEOUT_ERROR
    assert "timeout of 0.5s" in record.error.message
    assert "the coroutine was cancelled" in record.error.message
    assert record.started_at is not None
    assert record.finished_at is not None
    assert record.finished_at - record.started_at < 10.0
    assert len(module.events("start", job.id)) == 1
    assert module.events("end", job.id) == []


def test_timeout_kills_process(make_app: MakeApp, start_worker: StartWorker) -> None:
    module = make_app(SOURCE)
    worker = start_worker(module, "--processes", "1")
    job = module.task("stuck_process").enqueue()
    (start,) = wait_until(lambda: module.events("start", job.id), 30, "the job to start")
    assert start.pid != worker.pid
    record = module.wait_final([job.id], timeout=30)[job.id]

    assert record.state.value == "failed"
    assert record.error is not None
    assert record.error.type == TIMEOUT_ERROR
    assert "its process was killed" in record.error.message
    wait_until(lambda: not psutil.pid_exists(start.pid), 10, f"child pid {start.pid} to exit")
    assert module.events("end", job.id) == []

    # The pool replaces the killed child.
    after = module.task("quick_process").enqueue()
    assert module.wait_final([after.id], timeout=30)[after.id].state.value == "succeeded"
    (replacement,) = module.events("start", after.id)
    assert replacement.pid not in (start.pid, worker.pid)


@on_both_drivers
def test_timeout_discards_thread_result(make_app: MakeApp, start_worker: StartWorker) -> None:
    module = make_app(SYNC_SOURCE)
    start_worker(module, "--concurrency", "2")
    gate = module.gate("release")
    job = module.task("stuck_thread").enqueue(str(gate))
    failed = module.wait_final([job.id], timeout=30)[job.id]

    assert failed.state.value == "failed"
    assert failed.error is not None
    assert failed.error.type == TIMEOUT_ERROR
    assert "its result will be discarded" in failed.error.message

    gate.touch()
    wait_until(lambda: module.events("end", job.id), 30, "the timed-out thread to return")
    # Anything the late return could have settled would be written before this
    # later job, which the worker reserves and settles only after the return.
    later = module.task("quick").enqueue()
    assert module.wait_final([later.id], timeout=30)[later.id].state.value == "succeeded"
    assert module.record(job.id) == failed


@on_both_drivers
def test_straggler_keeps_its_slot(make_app: MakeApp, start_worker: StartWorker) -> None:
    module = make_app(SYNC_SOURCE)
    worker = start_worker(module, "--concurrency", "1")
    gate = module.gate("release")
    stuck = module.task("stuck_thread").enqueue(str(gate))
    wait_until(lambda: module.events("start", stuck.id), 30, "the stuck job to start")
    second = module.task("quick").enqueue()
    failed = module.wait_final([stuck.id], timeout=30)[stuck.id]

    assert failed.error is not None
    assert failed.error.type == TIMEOUT_ERROR
    # The exchange that settled the timeout would have reserved the second job
    # in the same transaction, had the slot been free.
    assert module.record(second.id).state.value == "queued"
    assert module.reserved_ids() == set()
    assert module.events("start", second.id) == []

    gate.touch()
    (end,) = wait_until(lambda: module.events("end", stuck.id), 30, "the straggler to return")
    record = module.wait_final([second.id], timeout=30)[second.id]
    assert record.state.value == "succeeded"
    (start,) = module.events("start", second.id)
    assert start.time >= end.time
    assert module.record(stuck.id) == failed
    assert worker.alive
