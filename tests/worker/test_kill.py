"""A worker killed with SIGKILL loses no job: its leases expire and another worker runs them."""

from __future__ import annotations

import signal
import time

import psutil
import pytest

from .support import MakeApp, StartWorker, on_both_drivers, wait_until

#: Sync thread-pool tasks, which both drivers run.
SYNC_SOURCE = """
@app.task
def record_run(index: int) -> int:
    mark("run")
    time.sleep(0.002)
    return index


@app.task(lease=1.5)
def short_lease(gate: str) -> str:
    mark("start")
    wait_for_file(gate)
    return "done"
"""

JOBS = 2000
CONCURRENCY = 8
LEASE = 2.0


@on_both_drivers
def test_sigkill_loses_no_job(
    make_app: MakeApp,
    start_worker: StartWorker,
    record_property: pytest.RecordProperty,
    request: pytest.FixtureRequest,
) -> None:
    module = make_app(SYNC_SOURCE, lease=LEASE)
    jobs = module.task("record_run").enqueue_many([((i,), {}) for i in range(JOBS)])
    ids = [job.id for job in jobs]
    first = start_worker(module, "--concurrency", str(CONCURRENCY))
    wait_until(lambda: len(module.events("run")) >= 300, 120, "300 runs before the kill")

    first.kill()
    killed_at = time.time()
    in_flight = module.reserved_ids()
    runs_before_kill = len(module.events("run"))
    assert in_flight, "no message was under a lease at the kill, so nothing was in flight"
    assert len(in_flight) <= CONCURRENCY, "the worker reserved more than its free capacity"
    assert runs_before_kill < JOBS, "every job ran before the kill"

    second = start_worker(module, "--concurrency", str(CONCURRENCY))
    records = module.wait_final(ids, timeout=120)

    states = {record.state.value for record in records.values()}
    assert states == {"succeeded"}
    assert module.live_messages("default") == 0
    runs = module.event_counts("run")
    assert set(runs) == set(ids), "some jobs never ran"
    ran_twice = {job_id for job_id, count in runs.items() if count > 1}
    assert max(runs.values()) <= 2
    assert ran_twice <= in_flight, "a job settled before the kill ran again"
    redelivered = [
        event.time
        for event in module.events("run")
        if event.job_id in in_flight and event.pid == second.pid
    ]
    assert redelivered, "no in-flight job was run again by the new worker"
    assert min(redelivered) - killed_at < LEASE + 10.0

    summary = (
        f"{len(ran_twice)} of {JOBS} jobs ran twice; {len(in_flight)} were under a lease "
        f"at the kill, after {runs_before_kill} runs"
    )
    print(summary)
    record_property("ran_twice", len(ran_twice))
    request.node.add_report_section("call", "sigkill", summary)


@on_both_drivers
def test_sigkill_redelivers_after_task_lease(make_app: MakeApp, start_worker: StartWorker) -> None:
    # The app lease is 30 s; the task's own lease of 1.5 s must bound the recovery time.
    module = make_app(SYNC_SOURCE, lease=30.0)
    gate = module.gate("release")
    job = module.task("short_lease").enqueue(str(gate))
    first = start_worker(module)
    wait_until(lambda: module.events("start", job.id), 30, "the job to start")

    first.kill()
    killed_at = time.time()
    gate.touch()
    second = start_worker(module)
    record = module.wait_final([job.id], timeout=20)[job.id]

    assert record.state.value == "succeeded"
    assert record.attempts == 2
    restarts = [e for e in module.events("start", job.id) if e.pid == second.pid]
    assert len(restarts) == 1
    assert restarts[0].time - killed_at < 1.5 + 10.0


PROCESS_SOURCE = """
@app.task(pool="process")
def long_process(gate: str) -> str:
    mark("start")
    wait_for_file(gate)
    mark("end")
    return "done"
"""


def test_sigkill_ends_pool_children(make_app: MakeApp, start_worker: StartWorker) -> None:
    # SIGKILL of the worker's main process only: its process-pool child must not run on,
    # or the job would run twice once its lease expires and another worker takes it.
    module = make_app(PROCESS_SOURCE)
    job = module.task("long_process").enqueue(str(module.gate("release")))
    worker = start_worker(module, "--processes", "1")
    (start,) = wait_until(lambda: module.events("start", job.id), 30, "the job to start")
    assert start.pid != worker.pid

    worker.send(signal.SIGKILL)
    wait_until(lambda: not psutil.pid_exists(start.pid), 10, f"child pid {start.pid} to exit")

    assert module.events("end", job.id) == []
