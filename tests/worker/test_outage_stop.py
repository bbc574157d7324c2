"""A worker stopped while its backend is down keeps the outcomes it could not record."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest

import sluicegate
from sluicegate.backends.base import Backend
from sluicegate.errors import StoreUnavailable
from sluicegate.worker import ThreadWorker, Worker

#: Seconds any step of the scenario may take on a loaded machine.
STEP_TIMEOUT = 30.0


class Outage:
    """Makes the worker's backend raise ``StoreUnavailable`` on exchange and settle."""

    def __init__(self, app: sluicegate.App) -> None:
        self.down = threading.Event()
        self.failed_calls: list[str] = []
        open_worker_backend = app.open_worker_backend

        def open_failing() -> Backend:
            backend = open_worker_backend()
            for name in ("exchange", "settle"):
                setattr(backend, name, self._failing(name, getattr(backend, name)))
            return backend

        app.open_worker_backend = open_failing  # type: ignore[method-assign]

    def _failing(self, name: str, method: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down.is_set():
                self.failed_calls.append(name)
                raise StoreUnavailable("backend down for the test")
            return method(*args, **kwargs)

        return call


@pytest.mark.parametrize("driver", [Worker, ThreadWorker])
def test_stop_during_outage_exits_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, driver: type[Worker | ThreadWorker]
) -> None:
    app = sluicegate.App(f"sqlite:///{tmp_path / 'jobs.db'}")
    started, release = threading.Event(), threading.Event()

    @app.task(queue="outage")
    def gated() -> str:
        started.set()
        release.wait(STEP_TIMEOUT)
        return "done"

    outage = Outage(app)
    job = gated.enqueue()
    worker = driver(app, queues=["outage"], concurrency=2, grace=STEP_TIMEOUT)

    def scenario() -> None:
        assert started.wait(STEP_TIMEOUT), "the job did not start"
        outage.down.set()
        worker.stop()
        release.set()

    helper = threading.Thread(target=scenario, daemon=True)
    helper.start()
    with caplog.at_level(logging.INFO, logger="sluicegate.worker"):
        code = worker.run()  # On this thread: the asyncio driver installs signal handlers.
    helper.join(STEP_TIMEOUT)

    assert code == 1
    # Each failed call already waited out the backend's reconnect window (60 s on
    # Redis), so a stopping worker settles once and gives up.
    assert outage.failed_calls.count("settle") == 1
    assert "outcomes not recorded yet" in caplog.text
    assert f"job_ids={job.id}" in caplog.text
    # The outcome never reached the store, so the job runs again after its lease.
    assert job.refresh().state.value == "running"
    app.close()
