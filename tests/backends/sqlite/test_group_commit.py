"""Concurrent enqueues of one process share transactions, each keeping its own outcome."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

from conformance_backends import job, message

from sluicegate.backends.sqlite import SQLiteBackend
from sluicegate.broker import QueueBounds
from sluicegate.errors import QueueFull

THREADS = 16
PER_THREAD = 20


def run_threads(target: Callable[[int], None]) -> None:
    start = threading.Barrier(THREADS)

    def body(index: int) -> None:
        start.wait(timeout=30)
        target(index)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)


def test_bound_holds_across_batched_enqueues(backend: SQLiteBackend) -> None:
    bounds = QueueBounds(max_length=100)
    outcomes: Counter[str] = Counter()
    created: list[str] = []
    lock = threading.Lock()

    def enqueue(_: int) -> None:
        for _ in range(PER_THREAD):
            new = job(backend.clock)
            try:
                backend.enqueue_jobs([new], bounds)
            except QueueFull:
                outcome = "full"
            else:
                outcome = "created"
                with lock:
                    created.append(new.message.id)
            with lock:
                outcomes[outcome] += 1

    run_threads(enqueue)

    assert outcomes == {"created": 100, "full": THREADS * PER_THREAD - 100}
    assert backend.length("q") == 100
    assert all(backend.get_job(job_id) is not None for job_id in created)


def test_one_key_from_many_threads_makes_one_job(backend: SQLiteBackend) -> None:
    bounds = QueueBounds()
    ids: list[str] = []
    lock = threading.Lock()

    def enqueue(_: int) -> None:
        result = backend.enqueue_jobs([job(backend.clock, idempotency_key="once")], bounds)[0]
        with lock:
            ids.append(result.job_id)

    run_threads(enqueue)

    assert len(ids) == THREADS
    assert len(set(ids)) == 1
    assert backend.length("q") == 1


def test_refused_batch_leaves_others_committed(backend: SQLiteBackend) -> None:
    small = QueueBounds(max_length=5)
    errors: list[Exception] = []
    lock = threading.Lock()

    def enqueue(index: int) -> None:
        try:
            if index % 2:
                backend.publish([message(backend.clock, queue="big")], QueueBounds())
            else:
                # Ten messages never fit a bound of five: refused whole, every time.
                backend.publish([message(backend.clock, queue="small") for _ in range(10)], small)
        except QueueFull as exc:
            with lock:
                errors.append(exc)

    run_threads(enqueue)

    assert len(errors) == THREADS // 2
    assert backend.length("small") == 0
    assert backend.length("big") == THREADS // 2
