"""SIGTERM or SIGINT: running jobs finish within the grace period, the rest go back, exit 0."""

from __future__ import annotations

import signal
import time

import pytest

from .support import (
    AppModule,
    MakeApp,
    StartWorker,
    WorkerProcess,
    on_both_drivers,
    task_cases,
    wait_until,
)

#: Sync thread-pool tasks, which both drivers run.
SYNC_SOURCE = """
@app.task
def two_seconds() -> str:
    mark("start")
    time.sleep(2.0)
    mark("end")
    return "done"


@app.task
def gated(gate: str) -> str:
    mark("start")
    wait_for_file(gate)
    mark("end")
    return "done"


@app.task
def half_second() -> str:
    mark("start")
    time.sleep(0.5)
    mark("end")
    return "done"
"""

#: Async and process-pool tasks, which only Worker runs.
OTHER_POOLS_SOURCE = """
@app.task(pool="process")
def two_seconds_process() -> str:
    mark("start")
    time.sleep(2.0)
    mark("end")
    return "done"


@app.task
async def gated_async(gate: str) -> str:
    mark("start")
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    mark("end")
    return "done"


@app.task(pool="process")
def gated_process(gate: str) -> str:
    mark("start")
    wait_for_file(gate)
    mark("end")
    return "done"
"""

SOURCE = SYNC_SOURCE + OTHER_POOLS_SOURCE

#: Seconds a stopping worker may take to exit beyond what its jobs or grace period need.
EXIT_MARGIN = 10.0


def send_stop(worker: WorkerProcess, target: str, signum: int = signal.SIGTERM) -> float:
    """Send ``signum`` to the main process or the process group; return the time sent."""
    if target == "group":
        worker.send_group(signum)
    else:
        worker.send(signum)
    return time.monotonic()


#: (source, task, target, worker_loop): the sync task on both drivers, the process task on
#: Worker with SIGTERM sent to its main process or to its whole process group.
SIGTERM_CASES = [
    pytest.param(SYNC_SOURCE, "two_seconds", "main", "asyncio", id="two_seconds-asyncio"),
    pytest.param(SYNC_SOURCE, "two_seconds", "main", "threads", id="two_seconds-threads"),
    pytest.param(SOURCE, "two_seconds_process", "main", "auto", id="two_seconds_process-main"),
    pytest.param(SOURCE, "two_seconds_process", "group", "auto", id="two_seconds_process-group"),
]

#: (source, task, worker_loop): the gated sync task on both drivers, the others on Worker.
GATED_CASES = task_cases(SYNC_SOURCE, ["gated"], SOURCE, ["gated_async", "gated_process"])


@pytest.mark.parametrize(
    ("source", "task", "target", "worker_loop"), SIGTERM_CASES, indirect=["worker_loop"]
)
def test_sigterm_finishes_running_jobs(
    make_app: MakeApp, start_worker: StartWorker, source: str, task: str, target: str
) -> None:
    module = make_app(source)
    ids = [module.task(task).enqueue().id for _ in range(4)]
    worker = start_worker(module, "--concurrency", "2", "--processes", "2")
    starts = wait_until(
        lambda: (found := module.events("start")) and len(found) >= 2 and found,
        30,
        "two jobs to start",
    )
    sent_at = send_stop(worker, target)

    assert worker.wait_exit(2.0 + EXIT_MARGIN) == 0
    assert time.monotonic() - sent_at < 2.0 + EXIT_MARGIN
    assert "stop requested" in worker.log()
    started = {event.job_id for event in starts}
    rest = [job_id for job_id in ids if job_id not in started]
    assert len(started) == 2
    records = module.records(ids)
    for job_id in started:
        assert records[job_id].state.value == "succeeded"
        assert records[job_id].attempts == 1
    for job_id in rest:
        assert records[job_id].state.value == "queued"
        assert records[job_id].attempts == 0
        assert module.events("start", job_id) == []

    start_worker(module, "--concurrency", "2", "--processes", "2")
    records = module.wait_final(ids, timeout=30)
    assert {record.state.value for record in records.values()} == {"succeeded"}
    assert {record.attempts for record in records.values()} == {1}
    assert module.event_counts("start") == dict.fromkeys(ids, 1)
    assert module.event_counts("end") == dict.fromkeys(ids, 1)


def assert_given_back(module: AppModule, job_id: str) -> None:
    record = module.record(job_id)
    assert record.state.value == "queued"
    assert record.attempts == 0
    assert record.note == "given back at worker shutdown"
    assert module.events("end", job_id) == []


def finish_given_back(module: AppModule, start_worker: StartWorker, job_id: str) -> None:
    """Open the gate and run the given-back job to the end on a new worker."""
    module.gate("release").touch()
    start_worker(module, "--processes", "1")
    record = module.wait_final([job_id], timeout=30)[job_id]
    assert record.state.value == "succeeded"
    assert record.attempts == 1
    assert len(module.events("start", job_id)) == 2
    assert len(module.events("end", job_id)) == 1


@pytest.mark.parametrize(("source", "task", "worker_loop"), GATED_CASES, indirect=["worker_loop"])
def test_grace_over_gives_back(
    make_app: MakeApp, start_worker: StartWorker, source: str, task: str
) -> None:
    module = make_app(source)
    job = module.task(task).enqueue(str(module.gate("release")))
    worker = start_worker(module, "--grace", "0.5", "--processes", "1")
    wait_until(lambda: module.events("start", job.id), 30, "the job to start")
    send_stop(worker, "main")

    assert worker.wait_exit(0.5 + EXIT_MARGIN) == 0
    assert "grace period over" in worker.log()
    assert_given_back(module, job.id)
    finish_given_back(module, start_worker, job.id)


@pytest.mark.parametrize("first", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
@pytest.mark.parametrize(("source", "task", "worker_loop"), GATED_CASES, indirect=["worker_loop"])
def test_second_sigterm_gives_back(
    make_app: MakeApp, start_worker: StartWorker, source: str, task: str, first: int
) -> None:
    module = make_app(source)
    job = module.task(task).enqueue(str(module.gate("release")))
    worker = start_worker(module, "--grace", "60", "--processes", "1")
    wait_until(lambda: module.events("start", job.id), 30, "the job to start")
    send_stop(worker, "main", first)
    worker.wait_log(f"stop requested signal={signal.Signals(first).name}", 10)
    assert worker.alive
    send_stop(worker, "main")

    assert worker.wait_exit(EXIT_MARGIN) == 0
    assert "second stop signal" in worker.log()
    assert_given_back(module, job.id)
    finish_given_back(module, start_worker, job.id)


@on_both_drivers
def test_two_quick_sigterms_lose_nothing(make_app: MakeApp, start_worker: StartWorker) -> None:
    # The kernel may merge two signals sent back to back into one, so the running jobs
    # either finish or are given back. Either way none may fail, stay running or be lost.
    module = make_app(SYNC_SOURCE)
    ids = [module.task("half_second").enqueue().id for _ in range(8)]
    worker = start_worker(module, "--concurrency", "4")
    wait_until(lambda: len(module.events("start")) >= 4, 30, "four jobs to start")
    send_stop(worker, "main")
    send_stop(worker, "main")

    assert worker.wait_exit(0.5 + EXIT_MARGIN) == 0
    assert "Traceback" not in worker.log()
    for record in module.records(ids).values():
        if record.state.value == "succeeded":
            assert record.attempts == 1
        else:
            assert record.state.value == "queued"
            assert record.attempts == 0

    start_worker(module, "--concurrency", "4")
    records = module.wait_final(ids, timeout=30)
    assert {record.state.value for record in records.values()} == {"succeeded"}
    assert {record.attempts for record in records.values()} == {1}
    assert set(module.event_counts("end")) == set(ids)
    assert max(module.event_counts("start").values()) <= 2
