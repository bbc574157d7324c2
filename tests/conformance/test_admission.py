"""Admission: idempotency keys, the max_length and max_wait bounds, all-or-none batches."""

from __future__ import annotations

import multiprocessing
import queue as queue_module
import time
from typing import Any

import pytest
from conformance_backends import BackendTarget, FakeClock, job, message

from sluicegate.backends.base import Backend
from sluicegate.broker import Action, QueueBounds, Settlement
from sluicegate.errors import QueueFull

BOUNDS = QueueBounds()
LEASE = 30.0


def test_idempotency_returns_existing(backend: Backend, clock: FakeClock) -> None:
    first = job(clock, idempotency_key="order-1")
    second = job(clock, idempotency_key="order-1")

    (created,) = backend.enqueue_jobs([first], BOUNDS)
    (matched,) = backend.enqueue_jobs([second], BOUNDS)

    assert created.job_id == first.message.id
    assert created.created is True
    assert matched.job_id == first.message.id
    assert matched.created is False
    assert backend.get_job(second.message.id) is None
    assert backend.length("q") == 1


def test_idempotency_within_batch(backend: Backend, clock: FakeClock) -> None:
    first = job(clock, idempotency_key="order-1")
    duplicate = job(clock, idempotency_key="order-1")
    other = job(clock, idempotency_key="order-2")

    results = backend.enqueue_jobs([first, duplicate, other], BOUNDS)

    assert [r.job_id for r in results] == [first.message.id, first.message.id, other.message.id]
    assert [r.created for r in results] == [True, False, True]
    assert backend.length("q") == 2


def test_idempotency_key_recorded(backend: Backend, clock: FakeClock) -> None:
    new = job(clock, idempotency_key="order-1")

    backend.enqueue_jobs([new], BOUNDS)
    record = backend.get_job(new.message.id)

    assert record is not None
    assert record.idempotency_key == "order-1"


def test_no_key_always_creates(backend: Backend, clock: FakeClock) -> None:
    results = backend.enqueue_jobs([job(clock), job(clock)], BOUNDS)

    assert [r.created for r in results] == [True, True]
    assert backend.length("q") == 2


def test_max_length_rejects(backend: Backend, clock: FakeClock) -> None:
    bounds = QueueBounds(max_length=3)
    for _ in range(3):
        backend.publish([message(clock)], bounds)
    rejected = message(clock)

    with pytest.raises(QueueFull) as caught:
        backend.publish([rejected], bounds)

    assert caught.value.queue == "q"
    assert caught.value.reason == "max_length"
    assert caught.value.limit == 3
    assert caught.value.retry_after > 0
    assert backend.length("q") == 3
    delivered = [d.message_id for d in backend.reserve(["q"], 10, LEASE, "w1")]
    assert rejected.id not in delivered


def test_max_length_publish_batch(backend: Backend, clock: FakeClock) -> None:
    bounds = QueueBounds(max_length=3)
    backend.publish([message(clock)], bounds)

    with pytest.raises(QueueFull):
        backend.publish([message(clock) for _ in range(3)], bounds)

    assert backend.length("q") == 1


def test_max_length_jobs_batch(backend: Backend, clock: FakeClock) -> None:
    bounds = QueueBounds(max_length=3)
    backend.enqueue_jobs([job(clock)], bounds)
    batch = [job(clock) for _ in range(3)]

    with pytest.raises(QueueFull):
        backend.enqueue_jobs(batch, bounds)

    assert backend.length("q") == 1
    assert backend.get_jobs([j.message.id for j in batch]) == []


def test_max_length_batch_fits(backend: Backend, clock: FakeClock) -> None:
    bounds = QueueBounds(max_length=3)
    backend.publish([message(clock)], bounds)

    backend.publish([message(clock), message(clock)], bounds)

    assert backend.length("q") == 3


def test_max_length_counts_all(backend: Backend, clock: FakeClock) -> None:
    bounds = QueueBounds(max_length=2)
    backend.publish([message(clock)], bounds)
    backend.reserve(["q"], 1, LEASE, "w1")
    backend.publish([message(clock, delay=60)], bounds)

    with pytest.raises(QueueFull):
        backend.publish([message(clock)], bounds)


def test_max_length_excludes_dead(backend: Backend, clock: FakeClock) -> None:
    bounds = QueueBounds(max_length=1)
    backend.publish([message(clock)], bounds)
    (delivery,) = backend.reserve(["q"], 1, LEASE, "w1")
    backend.settle([Settlement(delivery, Action.DEAD, reason="poison")])

    backend.publish([message(clock)], bounds)

    assert backend.length("q") == 1


def test_max_length_frees_on_ack(backend: Backend, clock: FakeClock) -> None:
    bounds = QueueBounds(max_length=1)
    backend.publish([message(clock)], bounds)
    (delivery,) = backend.reserve(["q"], 1, LEASE, "w1")
    backend.settle([Settlement(delivery, Action.ACK)])

    backend.publish([message(clock)], bounds)

    assert backend.length("q") == 1


def test_duplicate_key_not_counted(backend: Backend, clock: FakeClock) -> None:
    bounds = QueueBounds(max_length=1)
    backend.enqueue_jobs([job(clock, idempotency_key="k")], bounds)

    (result,) = backend.enqueue_jobs([job(clock, idempotency_key="k")], bounds)

    assert result.created is False


def test_max_wait_rejects(backend: Backend, clock: FakeClock) -> None:
    bounds = QueueBounds(max_wait=10)
    backend.publish([message(clock)], bounds)
    clock.advance(11)

    with pytest.raises(QueueFull) as caught:
        backend.publish([message(clock)], bounds)

    assert caught.value.reason == "max_wait"
    assert caught.value.limit == 10
    assert caught.value.retry_after > 0
    assert backend.length("q") == 1


def test_max_wait_admits_young(backend: Backend, clock: FakeClock) -> None:
    bounds = QueueBounds(max_wait=10)
    backend.publish([message(clock)], bounds)
    clock.advance(9)

    backend.publish([message(clock)], bounds)

    assert backend.length("q") == 2


def test_max_wait_after_drain(backend: Backend, clock: FakeClock) -> None:
    bounds = QueueBounds(max_wait=10)
    backend.publish([message(clock)], bounds)
    clock.advance(11)
    (delivery,) = backend.reserve(["q"], 1, LEASE, "w1")
    backend.settle([Settlement(delivery, Action.ACK)])

    backend.publish([message(clock)], bounds)

    assert backend.length("q") == 1


def test_max_wait_due_delayed(backend: Backend, clock: FakeClock) -> None:
    bounds = QueueBounds(max_wait=10)
    backend.publish([message(clock, delay=5)], bounds)
    clock.advance(16)

    with pytest.raises(QueueFull) as caught:
        backend.publish([message(clock)], bounds)

    assert caught.value.reason == "max_wait"


def test_retry_after_drain_rate(backend: Backend, clock: FakeClock) -> None:
    bounds = QueueBounds(max_length=50)
    backend.publish([message(clock, queue="idle") for _ in range(50)], bounds)
    backend.publish([message(clock, queue="busy") for _ in range(50)], bounds)
    for delivery in backend.reserve(["busy"], 50, LEASE, "w1"):
        backend.settle([Settlement(delivery, Action.ACK)])
    backend.publish([message(clock, queue="busy") for _ in range(50)], bounds)
    clock.advance(1)

    with pytest.raises(QueueFull) as idle:
        backend.publish([message(clock, queue="idle")], bounds)
    with pytest.raises(QueueFull) as busy:
        backend.publish([message(clock, queue="busy")], bounds)

    assert busy.value.retry_after > 0
    assert busy.value.retry_after < idle.value.retry_after


PRODUCERS = 4
ATTEMPTS_PER_PRODUCER = 60
CONCURRENT_MAX_LENGTH = 100


def produce(target: BackendTarget, start: Any, results: Any) -> None:
    """Publish one message at a time into a bounded queue; report counts to ``results``.

    Runs in a child process. Any exception other than ``QueueFull`` is
    reported as its repr so the test can name it.
    """
    outcome: dict[str, Any] = {"accepted": 0, "rejected": 0, "max_seen": 0, "error": None}
    backend = target.open()
    bounds = QueueBounds(max_length=CONCURRENT_MAX_LENGTH)
    try:
        start.wait(timeout=60)
        for _ in range(ATTEMPTS_PER_PRODUCER):
            try:
                backend.publish([message(time.time)], bounds)
                outcome["accepted"] += 1
            except QueueFull:
                outcome["rejected"] += 1
            outcome["max_seen"] = max(outcome["max_seen"], backend.length("q"))
    except Exception as exc:
        outcome["error"] = repr(exc)
    finally:
        backend.close()
        results.put(outcome)


def test_bound_concurrent_producers(backend: Backend, backend_target: BackendTarget) -> None:
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(PRODUCERS)
    results = context.Queue()
    processes = [
        context.Process(target=produce, args=(backend_target, start, results))
        for _ in range(PRODUCERS)
    ]
    for process in processes:
        process.start()
    try:
        outcomes = [results.get(timeout=120) for _ in processes]
    except queue_module.Empty:
        outcomes = []
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join(timeout=10)

    assert len(outcomes) == PRODUCERS
    assert [o["error"] for o in outcomes] == [None] * PRODUCERS
    assert sum(o["accepted"] for o in outcomes) == CONCURRENT_MAX_LENGTH
    assert (
        sum(o["rejected"] for o in outcomes)
        == PRODUCERS * ATTEMPTS_PER_PRODUCER - CONCURRENT_MAX_LENGTH
    )
    assert max(o["max_seen"] for o in outcomes) <= CONCURRENT_MAX_LENGTH
    assert backend.length("q") == CONCURRENT_MAX_LENGTH
    assert backend.stats("q")[0].ready == CONCURRENT_MAX_LENGTH
