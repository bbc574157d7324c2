"""cancel() at every stage of a job: scheduled, queued, reserved, running."""

from __future__ import annotations

import pytest

from .support import MakeApp, StartWorker, on_both_drivers, task_cases, wait_until

#: Sync thread-pool tasks, which both drivers run.
SYNC_SOURCE = """
@app.task
def quick() -> str:
    mark("run")
    return "done"


@app.task
def polling(seconds: float) -> str:
    mark("start")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if job_context().cancelled:
            mark("stopped")
            return "stopped"
        time.sleep(0.01)
    mark("end")
    return "ran to the end"


@app.task
def ignoring(gate: str) -> str:
    mark("start")
    wait_for_file(gate)
    mark("end")
    return "finished anyway"
"""

#: Async and process-pool tasks, which only Worker runs.
OTHER_POOLS_SOURCE = """
@app.task(pool="process")
def gated_process(gate: str) -> str:
    mark("start")
    wait_for_file(gate)
    mark("end")
    return "done"


@app.task
async def sleeper_async() -> str:
    mark("start")
    await asyncio.sleep(60)
    mark("end")
    return "done"


@app.task(pool="process")
def polling_process(seconds: float) -> str:
    return polling.fn(seconds)
"""

SOURCE = SYNC_SOURCE + OTHER_POOLS_SOURCE


@on_both_drivers
def test_cancel_scheduled_never_runs(make_app: MakeApp, start_worker: StartWorker) -> None:
    module = make_app(SYNC_SOURCE)
    start_worker(module)
    job = module.task("quick").enqueue(delay=1.0)
    assert job.status.value == "scheduled"
    assert job.cancel().value == "cancelled"
    # A later job with a longer delay: once it ran, the cancelled one would have run too.
    sentinel = module.task("quick").enqueue(delay=1.5)
    module.wait_final([sentinel.id], timeout=30)

    record = module.record(job.id)
    assert record.state.value == "cancelled"
    assert record.attempts == 0
    assert module.events(job_id=job.id) == []
    assert module.live_messages("default") == 0


@on_both_drivers
def test_cancel_queued_never_runs(make_app: MakeApp, start_worker: StartWorker) -> None:
    module = make_app(SYNC_SOURCE)
    job = module.task("quick").enqueue()
    assert job.status.value == "queued"
    assert job.cancel().value == "cancelled"
    start_worker(module)
    sentinel = module.task("quick").enqueue()
    module.wait_final([sentinel.id], timeout=30)

    record = module.record(job.id)
    assert record.state.value == "cancelled"
    assert record.attempts == 0
    assert module.events(job_id=job.id) == []


def test_cancel_reserved_never_starts(make_app: MakeApp, start_worker: StartWorker) -> None:
    # One process and two slots: the second job is reserved but waits for the process.
    module = make_app(SOURCE)
    gate = module.gate("first")
    task = module.task("gated_process")
    first = task.enqueue(str(gate))
    second = task.enqueue(str(module.gate("second")))
    module.gate("second").touch()
    worker = start_worker(module, "--processes", "1", "--concurrency", "2")
    wait_until(lambda: module.events("start", first.id), 30, "the first job to start")
    module.wait_state(second.id, "running", 30)
    assert second.cancel().value == "running"
    worker.wait_log(f"job cancel requested job_id={second.id}", 10)
    gate.touch()
    records = module.wait_final([first.id, second.id], timeout=30)

    assert records[first.id].state.value == "succeeded"
    assert records[second.id].state.value == "cancelled"
    assert module.events(job_id=second.id) == []


def test_cancel_running_async(make_app: MakeApp, start_worker: StartWorker) -> None:
    module = make_app(SOURCE)
    start_worker(module)
    job = module.task("sleeper_async").enqueue()
    wait_until(lambda: module.events("start", job.id), 30, "the job to start")
    assert job.cancel().value == "running"
    record = module.wait_final([job.id], timeout=10)[job.id]

    assert record.state.value == "cancelled"
    assert record.cancel_requested
    assert module.events("end", job.id) == []


@pytest.mark.parametrize(
    ("source", "task", "worker_loop"),
    task_cases(SYNC_SOURCE, ["polling"], SOURCE, ["polling_process"]),
    indirect=["worker_loop"],
)
def test_cancel_running_sync_polls(
    make_app: MakeApp, start_worker: StartWorker, source: str, task: str
) -> None:
    module = make_app(source)
    start_worker(module, "--processes", "1")
    job = module.task(task).enqueue(60.0)
    wait_until(lambda: module.events("start", job.id), 30, "the job to start")
    assert job.cancel().value == "running"
    record = module.wait_final([job.id], timeout=10)[job.id]

    assert record.state.value == "cancelled"
    assert record.result is None
    assert len(module.events("stopped", job.id)) == 1
    assert module.events("end", job.id) == []


@on_both_drivers
def test_cancel_running_sync_ignored(make_app: MakeApp, start_worker: StartWorker) -> None:
    module = make_app(SYNC_SOURCE)
    worker = start_worker(module)
    gate = module.gate("release")
    job = module.task("ignoring").enqueue(str(gate))
    wait_until(lambda: module.events("start", job.id), 30, "the job to start")
    assert job.cancel().value == "running"
    worker.wait_log(f"job cancel requested job_id={job.id}", 10)
    gate.touch()
    record = module.wait_final([job.id], timeout=30)[job.id]

    assert record.state.value == "succeeded"
    assert job.result(timeout=1) == "finished anyway"
    assert record.cancel_requested
    assert record.note is not None
    assert "cancel requested" in record.note
    assert len(module.events("end", job.id)) == 1


#: One call per 4 seconds. Of jobs enqueued together the first runs at once, and the worker
#: defers each of the others until its turn, 4 seconds after the previous one.
RATE_LIMITED_SOURCE = """
@app.task(rate_limit="1/4s", retries=0)
def send(i: int) -> int:
    mark("run")
    return i
"""


@on_both_drivers
def test_cancel_deferred_never_runs(make_app: MakeApp, start_worker: StartWorker) -> None:
    module = make_app(RATE_LIMITED_SOURCE)
    start_worker(module)
    task = module.task("send")
    jobs = [task.enqueue(i) for i in range(3)]
    first = wait_until(lambda: module.events("run"), 30, "the first job to run")[0].job_id
    deferred_jobs = [job for job in jobs if job.id != first]
    deferred_records = [module.wait_state(job.id, "scheduled", 30) for job in deferred_jobs]
    states = [job.cancel().value for job in deferred_jobs]
    # This job's turn comes after the turns of the cancelled jobs, so once it ran
    # they would have run too.
    sentinel = task.enqueue(3)
    records = module.wait_final([*(job.id for job in jobs), sentinel.id], timeout=60)

    assert len(deferred_jobs) == 2
    for record in deferred_records:
        assert record.note is not None
        assert record.note.startswith("deferred by rate limit")
    assert states == ["cancelled", "cancelled"]
    assert records[first].state.value == "succeeded"
    assert records[sentinel.id].state.value == "succeeded"
    for job in deferred_jobs:
        assert records[job.id].state.value == "cancelled"
        assert records[job.id].note == "cancelled before it ran"
        assert records[job.id].attempts == 0
        assert module.events(job_id=job.id) == []
    assert module.live_messages("default") == 0
