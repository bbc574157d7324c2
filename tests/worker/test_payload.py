"""Payload size limits: arguments are checked at enqueue, results on the worker."""

from __future__ import annotations

import hashlib

import pytest

from sluicegate import PayloadTooLarge

from .support import MakeApp, StartWorker, on_both_drivers, text_of_size

#: Sync thread-pool tasks, which both drivers run.
SYNC_SOURCE = """
@app.task
def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@app.task
def blob(size: int) -> str:
    return "x" * size
"""

KIB = 1024
MIB = 1024 * KIB

#: The default limit on an encoded message and on an encoded result, in bytes.
LIMIT = MIB


@on_both_drivers
def test_arguments_under_limit_succeed(make_app: MakeApp, start_worker: StartWorker) -> None:
    module = make_app(SYNC_SOURCE)
    start_worker(module, "--concurrency", "2")
    texts = {size: text_of_size(size) for size in (KIB, 7000, 255 * KIB, MIB - KIB)}
    jobs = {size: module.task("digest").enqueue(text) for size, text in texts.items()}
    records = module.wait_final([job.id for job in jobs.values()], timeout=60)

    for size, job in jobs.items():
        assert records[job.id].state.value == "succeeded", size
        expected = hashlib.sha256(texts[size].encode()).hexdigest()
        assert job.result(timeout=1) == expected, size


@pytest.mark.parametrize("size", [MIB + 1, 16 * MIB])
def test_arguments_over_limit_rejected(make_app: MakeApp, size: int) -> None:
    module = make_app(SYNC_SOURCE)
    with pytest.raises(PayloadTooLarge) as raised:
        module.task("digest").enqueue(text_of_size(size))

    error = raised.value
    assert error.limit == LIMIT
    assert error.size > size
    assert str(LIMIT) in str(error)
    assert str(error.size) in str(error)
    assert module.sql("SELECT count(*) FROM jobs") == [(0,)]
    assert module.live_messages("default") == 0


@on_both_drivers
def test_result_over_limit_fails(make_app: MakeApp, start_worker: StartWorker) -> None:
    module = make_app(SYNC_SOURCE)
    worker = start_worker(module)
    job = module.task("blob").enqueue(2 * MIB)
    record = module.wait_final([job.id], timeout=60)[job.id]

    assert record.state.value == "failed"
    assert record.attempts == 1
    assert record.result is None
    assert record.error is not None
    assert record.error.type == "PayloadTooLarge"
    assert "return value was rejected" in record.error.message
    assert f"over the limit of {LIMIT} bytes" in record.error.message

    after = module.task("digest").enqueue("still serving")
    assert module.wait_final([after.id], timeout=30)[after.id].state.value == "succeeded"
    assert worker.alive
