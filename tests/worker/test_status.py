"""Job status through a worker's life: never a state for an unknown or expired id."""

from __future__ import annotations

import time

import pytest

from sluicegate import JobNotFound
from sluicegate.job import Job
from sluicegate.message import new_id

from .support import MakeApp, StartWorker, on_both_drivers, wait_until

#: Sync thread-pool tasks, which both drivers run.
SYNC_SOURCE = """
@app.task(retention=1.0)
def short_lived() -> str:
    return "done"
"""


def test_status_unknown_id(make_app: MakeApp) -> None:
    module = make_app(SYNC_SOURCE)
    unknown = new_id()
    with pytest.raises(JobNotFound):
        module.app.job(unknown)
    started = time.monotonic()
    with pytest.raises(JobNotFound):
        Job(module.app, unknown).result(timeout=30)
    assert time.monotonic() - started < 1.0


@on_both_drivers
def test_status_through_retention(make_app: MakeApp, start_worker: StartWorker) -> None:
    module = make_app(SYNC_SOURCE)
    task = module.task("short_lived")
    scheduled = task.enqueue(delay=600)
    queued = task.enqueue()
    assert module.app.job(scheduled.id).status.value == "scheduled"
    assert module.app.job(queued.id).status.value == "queued"

    start_worker(module)
    record = module.wait_final([queued.id], timeout=30)[queued.id]
    assert record.state.value == "succeeded"
    assert record.expires_at is not None

    def expired() -> bool:
        try:
            module.app.job(queued.id)
        except JobNotFound:
            return True
        return False

    # The retention is 1 s; the record must read as not found soon after, not at the
    # worker's next purge of expired records.
    wait_until(expired, 5.0, "the succeeded job to expire")
    assert time.time() - record.expires_at < 5.0
    assert module.app.job(scheduled.id).status.value == "scheduled"
