"""A job held for its rate-limit slot is checked for a cancel request before it starts."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import sluicegate
from sluicegate.worker import ThreadWorker, Worker
from sluicegate.worker.guards import Admitted, TaskGuard
from sluicegate.worker.lease import Heartbeat

#: Seconds the guard holds the job: far longer than the test needs to cancel it.
HOLD = 2.0

#: Seconds any step may take on a loaded machine.
STEP_TIMEOUT = 30.0


@pytest.mark.parametrize("driver", [Worker, ThreadWorker])
def test_held_job_cancelled_before_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, driver: type[Worker | ThreadWorker]
) -> None:
    monkeypatch.setattr(TaskGuard, "admit", lambda self: Admitted(None, HOLD))
    # A hold lasts at most half a second, so the heartbeat may not poll the cancel request
    # before the job starts. Here it never polls.
    monkeypatch.setattr(Heartbeat, "beat", lambda self, entries: [])
    app = sluicegate.App(f"sqlite:///{tmp_path / 'jobs.db'}")
    ran = threading.Event()

    @app.task(queue="held", rate_limit="100/s")
    def limited() -> str:
        ran.set()
        return "ran"

    job = limited.enqueue()
    worker = driver(app, queues=["held"], concurrency=2)
    outcome: dict[str, str] = {}

    def scenario() -> None:
        try:
            deadline = time.monotonic() + STEP_TIMEOUT
            while job.refresh().state.value != "running" and time.monotonic() < deadline:
                time.sleep(0.01)
            outcome["at_cancel"] = job.cancel().value
            outcome["final"] = job.wait(STEP_TIMEOUT).state.value
        finally:
            worker.stop()

    helper = threading.Thread(target=scenario, daemon=True)
    helper.start()
    assert worker.run() == 0
    helper.join(STEP_TIMEOUT)

    assert outcome["at_cancel"] == "running"
    assert outcome["final"] == "cancelled"
    assert not ran.is_set()
    app.close()
