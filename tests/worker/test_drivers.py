"""The two drivers: which one ``--loop`` picks, what ThreadWorker imports, and its wake-ups."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

import sluicegate
from sluicegate.worker.threaded import ThreadWorker

from .support import PLAIN_APP_HEADER, MakeApp, StartWorker, on_both_drivers, wait_until

SYNC_SOURCE = """
import sys


@app.task
def loaded_modules() -> list:
    return sorted(m for m in ("asyncio", "ssl", "hashlib", "_hashlib") if m in sys.modules)
"""

ASYNC_SOURCE = """
@app.task
def plain() -> str:
    return "done"


@app.task
async def waits() -> str:
    return "done"
"""

SPLIT_SOURCE = """
@app.task(queue="mail")
def send() -> str:
    return "sent"


@app.task(queue="crunch", pool="process")
def crunch() -> str:
    return "crunched"
"""

BUSY_SOURCE = """
import threading

ACTIVE = [0]
ACTIVE_LOCK = threading.Lock()


@app.task
def counted(index: int) -> int:
    with ACTIVE_LOCK:
        ACTIVE[0] += 1
        active = ACTIVE[0]
    mark("run", active)
    time.sleep(0.02)
    with ACTIVE_LOCK:
        ACTIVE[0] -= 1
    return index
"""

#: Jobs of the busy test and the worker's concurrency for them.
BUSY_JOBS = 500
BUSY_CONCURRENCY = 16

#: Seconds a rejected worker may take to import the app and exit.
EXIT_TIMEOUT = 30.0


def started_line(log: str) -> str:
    (line,) = [line for line in log.splitlines() if "worker started" in line]
    return line


@pytest.mark.parametrize(
    ("source", "driver"),
    [
        pytest.param(SYNC_SOURCE, "ThreadWorker", id="sync-only"),
        pytest.param(ASYNC_SOURCE, "Worker", id="with-async"),
    ],
)
def test_auto_picks_driver(
    make_app: MakeApp, start_worker: StartWorker, source: str, driver: str
) -> None:
    module = make_app(source)
    worker = start_worker(module, "--loop", "auto")

    assert f" driver={driver}" in started_line(worker.log())


@pytest.mark.parametrize(
    ("queues", "driver"),
    [
        pytest.param("mail", "ThreadWorker", id="sync-queue"),
        pytest.param("mail,crunch", "Worker", id="both-queues"),
    ],
)
def test_auto_looks_at_served_queues(
    make_app: MakeApp, start_worker: StartWorker, queues: str, driver: str
) -> None:
    module = make_app(SPLIT_SOURCE)
    worker = start_worker(module, "--loop", "auto", "--queues", queues, "--processes", "1")
    job = module.task("send").enqueue()

    assert f" driver={driver}" in started_line(worker.log())
    assert module.wait_final([job.id], timeout=30)[job.id].state.value == "succeeded"


def test_threads_rejects_async_app(make_app: MakeApp, start_worker: StartWorker) -> None:
    module = make_app(ASYNC_SOURCE)
    worker = start_worker(module, "--loop", "threads", ready=False)

    assert worker.wait_exit(EXIT_TIMEOUT) != 0
    log = worker.log()
    errors = [line for line in log.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1
    assert f"{module.name}.waits" in errors[0]
    assert f"{module.name}.plain" not in errors[0]
    assert "--loop asyncio" in errors[0]
    assert "Traceback" not in log
    assert "worker started" not in log


@pytest.mark.parametrize(
    ("worker_loop", "expected"),
    [
        pytest.param("threads", [], id="threads"),
        pytest.param("asyncio", ["asyncio", "ssl"], id="asyncio"),
    ],
    indirect=["worker_loop"],
)
def test_thread_worker_skips_asyncio(
    make_app: MakeApp, start_worker: StartWorker, expected: list[str]
) -> None:
    # The asyncio case shows that the task would see the modules if the worker loaded them.
    module = make_app(SYNC_SOURCE, header=PLAIN_APP_HEADER)
    start_worker(module)
    job = module.task("loaded_modules").enqueue()

    assert job.result(timeout=30) == expected


@on_both_drivers
def test_many_jobs_run_once(make_app: MakeApp, start_worker: StartWorker) -> None:
    module = make_app(BUSY_SOURCE)
    jobs = module.task("counted").enqueue_many([((i,), {}) for i in range(BUSY_JOBS)])
    worker = start_worker(module, "--concurrency", str(BUSY_CONCURRENCY))
    records = module.wait_final([job.id for job in jobs], timeout=120)

    assert {record.state.value for record in records.values()} == {"succeeded"}
    assert {record.attempts for record in records.values()} == {1}
    assert [job.result(timeout=1) for job in jobs] == list(range(BUSY_JOBS))
    runs = module.events("run")
    assert len(runs) == BUSY_JOBS
    assert {event.job_id for event in runs} == set(records)
    # The worker's own count of jobs that run at once (all its tasks run in its process).
    peak = max(int(event.fields[0]) for event in runs)
    assert peak <= BUSY_CONCURRENCY
    assert peak > 1
    assert worker.alive


class IdleListener:
    """A wake-up listener that never fires, for a ThreadWorker driven by hand."""

    def __init__(self) -> None:
        self.read_end, self.write_end = os.pipe()

    def fileno(self) -> int:
        return self.read_end

    def drain(self) -> None:
        pass

    def close(self) -> None:
        os.close(self.read_end)
        os.close(self.write_end)


#: Threads that post calls to the driver at once, and the calls each one posts.
POSTERS = 4
POSTS = 1000

#: Seconds the driver sleeps at most without a poke; a lost wake-up waits that long.
SLEEP = 5.0

#: Upper bound, in seconds, on the time from a post to its call on a loaded machine.
MAX_POST_DELAY = 1.0


def test_posts_wake_the_driver(tmp_path: Path) -> None:
    app = sluicegate.App(f"sqlite:///{tmp_path / 'jobs.db'}")
    worker = ThreadWorker(app)
    listener = worker._listener = IdleListener()
    delays: list[float] = []

    # Like a breaker's count or a rate-limit admission, record() does not poke the
    # driver, so only the byte its post writes to the pipe ends the driver's select.
    def record(posted_at: float) -> None:
        delays.append(time.monotonic() - posted_at)

    def post_many() -> None:
        for _ in range(POSTS):
            worker._post(record, time.monotonic())
            time.sleep(0.0002)
        worker._post(worker._poke)  # ends the driver's last sleep

    posters = [threading.Thread(target=post_many) for _ in range(POSTERS)]
    for poster in posters:
        poster.start()
    deadline = time.monotonic() + 60
    while len(delays) < POSTERS * POSTS and time.monotonic() < deadline:
        worker._sleep(SLEEP)
    for poster in posters:
        poster.join(10)
    listener.close()
    app.close()

    assert len(delays) == POSTERS * POSTS
    assert max(delays) < MAX_POST_DELAY


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_late_straggler_writes_nowhere(tmp_path: Path) -> None:
    app = sluicegate.App(f"sqlite:///{tmp_path / 'jobs.db'}", lease=2.0)
    release = threading.Event()

    @app.task(timeout=0.2, retries=0)
    def stuck() -> str:
        release.wait(30)
        return "late"

    worker = ThreadWorker(app, concurrency=1, grace=0)
    runner = threading.Thread(target=worker.run)
    runner.start()
    try:
        job = stuck.enqueue()
        wait_until(lambda: job.status.is_final, 30, "the stuck job to time out")
    finally:
        worker.stop()
        runner.join(30)
    (task_thread,) = worker._threads
    assert not runner.is_alive()
    assert task_thread.is_alive()

    # run() returned while the straggler still runs. Give the number of its wake-up
    # pipe's write end to a new file if run() closed it, as a later open() might.
    probe = tmp_path / "probe"
    write_end = worker._pipe_w
    reused = not is_open(write_end)
    with open(probe, "wb") as file:
        if reused:
            os.dup2(file.fileno(), write_end)
        release.set()
        task_thread.join(30)
    if reused:
        os.close(write_end)
    state = job.status.value
    app.close()

    assert not task_thread.is_alive()
    assert probe.read_bytes() == b""
    assert state == "failed"
