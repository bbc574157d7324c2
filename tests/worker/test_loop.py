"""Each driver's loop in-process: which exchanges it makes for a lone job."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import sluicegate
from sluicegate import Task
from sluicegate.backends.base import Backend
from sluicegate.worker import ThreadWorker, Worker

from .support import wait_until

#: Upper bound, in seconds, on one job's round trip through an idle worker.
JOB_TIMEOUT = 30.0

#: Seconds the job runs, long enough for an extra exchange to happen meanwhile.
RUN_SECONDS = 0.2


@dataclass(frozen=True)
class Exchange:
    settled: int
    limit: int
    delivered: int


def counting_app(tmp_path: Path) -> tuple[sluicegate.App, list[Exchange]]:
    """Return an app whose worker backends record every exchange they make."""
    app = sluicegate.App(f"sqlite:///{tmp_path / 'jobs.db'}")
    exchanges: list[Exchange] = []
    open_worker_backend = app.open_worker_backend

    def open_counting() -> Backend:
        backend = open_worker_backend()
        exchange = backend.exchange

        def record(settlements: Any, queues: Any, limit: int, *rest: Any) -> Any:
            count = len(settlements)
            settled, deliveries = exchange(settlements, queues, limit, *rest)
            exchanges.append(Exchange(count, limit, len(deliveries)))
            return settled, deliveries

        backend.exchange = record  # type: ignore[method-assign]
        return backend

    app.open_worker_backend = open_counting  # type: ignore[method-assign]
    return app, exchanges


def run_on_asyncio(app: sluicegate.App, task: Task[Any, Any], exchanges: list[Exchange]) -> Any:
    """Run ``task`` once on a Worker served on this thread's event loop; return its result."""
    worker = Worker(app, queues=["lone"], concurrency=4)

    async def scenario() -> Any:
        serving = asyncio.create_task(worker.serve())
        try:
            # Enqueue once the worker found the queue empty and went idle, so the
            # job arrives through a wake-up, as it does for a worker that waits.
            deadline = time.monotonic() + JOB_TIMEOUT
            while not exchanges and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            job = await task.aenqueue()
            return await job.aresult(timeout=JOB_TIMEOUT)
        finally:
            worker.stop()
            await serving

    return asyncio.run(scenario())


def run_on_threads(app: sluicegate.App, task: Task[Any, Any], exchanges: list[Exchange]) -> Any:
    """Run ``task`` once on a ThreadWorker driven by another thread; return its result."""
    worker = ThreadWorker(app, queues=["lone"], concurrency=4)
    driver = threading.Thread(target=worker.run)
    driver.start()
    try:
        # As above: the job arrives through a wake-up of the idle worker.
        wait_until(lambda: exchanges, JOB_TIMEOUT, "the worker's first exchange")
        return task.enqueue().result(timeout=JOB_TIMEOUT)
    finally:
        worker.stop()
        driver.join(JOB_TIMEOUT)


@pytest.mark.parametrize("run", [run_on_asyncio, run_on_threads], ids=["asyncio", "threads"])
def test_lone_job_no_extra_exchange(tmp_path: Path, run: Callable[..., Any]) -> None:
    app, exchanges = counting_app(tmp_path)

    @app.task(queue="lone")
    def nap() -> str:
        time.sleep(RUN_SECONDS)
        return "rested"

    result = run(app, nap, exchanges)
    app.close()
    reserved_at = next(i for i, e in enumerate(exchanges) if e.delivered == 1)
    after = exchanges[reserved_at + 1]

    assert result == "rested"
    assert exchanges[reserved_at].limit == 4
    # The reserve found the queue empty after one job, so the next exchange
    # waits for that job and settles it, instead of asking for more at once.
    assert after.settled == 1
