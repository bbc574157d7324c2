"""Leases: heartbeats keep a long job from redelivery, and delayed jobs wait in the broker."""

from __future__ import annotations

import pytest

from .support import MakeApp, StartWorker, on_both_drivers

#: Sync thread-pool tasks, which both drivers run.
SYNC_SOURCE = """
@app.task
def three_seconds() -> str:
    mark("start")
    time.sleep(3.0)
    mark("end")
    return "done"


@app.task
def delayed() -> None:
    mark("start")
"""

#: Async and process-pool tasks, which only Worker runs.
OTHER_POOLS_SOURCE = """
@app.task
async def three_seconds_async() -> str:
    mark("start")
    await asyncio.sleep(3.0)
    mark("end")
    return "done"


@app.task(pool="process")
def three_seconds_process() -> str:
    mark("start")
    time.sleep(3.0)
    mark("end")
    return "done"
"""

SOURCE = SYNC_SOURCE + OTHER_POOLS_SOURCE

#: Seconds that wall clocks read in different processes may disagree by.
WALL_CLOCK_TOLERANCE = 0.05


#: (source, tasks, worker_loop): the sync task on both drivers, the others on Worker.
LONG_JOB_CASES = [
    pytest.param(SYNC_SOURCE, ["three_seconds"], "asyncio", id="asyncio"),
    pytest.param(SYNC_SOURCE, ["three_seconds"], "threads", id="threads"),
    pytest.param(SOURCE, ["three_seconds_async", "three_seconds_process"], "auto", id="other"),
]


@pytest.mark.parametrize(
    ("source", "names", "worker_loop"), LONG_JOB_CASES, indirect=["worker_loop"]
)
def test_long_job_runs_once(
    make_app: MakeApp, start_worker: StartWorker, source: str, names: list[str]
) -> None:
    # Each job runs three times longer than the 1 s lease; two workers compete.
    module = make_app(source, lease=1.0)
    ids = [module.task(name).enqueue().id for name in names]
    start_worker(module, "--concurrency", "4", "--processes", "1")
    start_worker(module, "--concurrency", "4", "--processes", "1")
    records = module.wait_final(ids, timeout=60)

    for name, job_id in zip(names, ids, strict=True):
        record = records[job_id]
        assert record.state.value == "succeeded", name
        assert record.attempts == 1, name
        assert len(module.events("start", job_id)) == 1, name
        assert len(module.events("end", job_id)) == 1, name


@on_both_drivers
def test_delayed_jobs_run_once(make_app: MakeApp, start_worker: StartWorker) -> None:
    # The delay is three leases long; no job may run early, late or twice.
    module = make_app(SYNC_SOURCE, lease=1.0)
    delay = 3.0
    task = module.task("delayed")
    jobs = [task.enqueue(delay=delay) for _ in range(20)]
    start_worker(module, "--concurrency", "4")
    start_worker(module, "--concurrency", "4")
    records = module.wait_final([job.id for job in jobs], timeout=60)

    starts = module.event_counts("start")
    for job in jobs:
        record = records[job.id]
        assert record.state.value == "succeeded"
        assert record.attempts == 1
        assert starts[job.id] == 1
        assert record.started_at is not None
        due = record.created_at + delay
        # The producer and the workers read the wall clock in different
        # processes; a VM's clock can step back by a few milliseconds.
        assert record.started_at >= due - WALL_CLOCK_TOLERANCE
        assert record.started_at - due < 2.0
