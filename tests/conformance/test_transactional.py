"""Transactional enqueue: a job created in the caller's transaction lives and dies with it.

Only backends that implement ``TransactionalEnqueue`` (PostgreSQL) run these.
"""

from __future__ import annotations

import select
from collections.abc import Iterator
from typing import Any

import pytest
from conformance_backends import BackendTarget, FakeClock, job

from sluicegate.backends.base import Backend, TransactionalEnqueue
from sluicegate.broker import QueueBounds
from sluicegate.errors import QueueFull

BOUNDS = QueueBounds()

#: Upper bound, in seconds, on waiting for a wake-up that should come at once.
WAKE_TIMEOUT = 5.0


@pytest.fixture
def caller_connection(backend: Backend, backend_target: BackendTarget) -> Iterator[Any]:
    """A psycopg connection of the application's own, outside the backend's pool."""
    if not isinstance(backend, TransactionalEnqueue):
        pytest.skip(f"the {backend_target.kind} backend has no transactional enqueue")
    import psycopg

    from sluicegate.backends.postgres import parse_url

    with psycopg.connect(parse_url(backend_target.location).conninfo) as connection:
        yield connection


def test_rolled_back_leaves_no_job(
    backend: Backend, caller_connection: Any, clock: FakeClock
) -> None:
    assert isinstance(backend, TransactionalEnqueue)
    new = job(clock)

    with caller_connection.transaction(force_rollback=True):
        (result,) = backend.enqueue_jobs_in(caller_connection, [new], BOUNDS)

    assert result.created is True
    assert backend.get_job(new.message.id) is None
    assert backend.length("q") == 0
    assert backend.reserve(["q"], 10, 30.0, "w1") == []


def test_committed_leaves_one_job(
    backend: Backend, caller_connection: Any, clock: FakeClock
) -> None:
    assert isinstance(backend, TransactionalEnqueue)
    new = job(clock)

    with caller_connection.transaction():
        backend.enqueue_jobs_in(caller_connection, [new], BOUNDS)
        invisible = backend.get_job(new.message.id)
    deliveries = backend.reserve(["q"], 10, 30.0, "w1")

    assert invisible is None
    assert backend.get_job(new.message.id) is not None
    assert backend.length("q") == 1
    assert [d.message_id for d in deliveries] == [new.message.id]


def test_wake_up_sent_at_commit(backend: Backend, caller_connection: Any, clock: FakeClock) -> None:
    assert isinstance(backend, TransactionalEnqueue)
    listener = backend.listener()
    try:
        with caller_connection.transaction():
            backend.enqueue_jobs_in(caller_connection, [job(clock)], BOUNDS)
            woken_early = listener.wait(0.2)

        assert woken_early is False
        assert select.select([listener.fileno()], [], [], WAKE_TIMEOUT)[0]
    finally:
        listener.close()


def test_queue_full_keeps_transaction(
    backend: Backend, caller_connection: Any, clock: FakeClock
) -> None:
    assert isinstance(backend, TransactionalEnqueue)
    bounds = QueueBounds(max_length=1)
    first, rejected = job(clock), job(clock)

    with caller_connection.transaction():
        backend.enqueue_jobs_in(caller_connection, [first], bounds)
        with pytest.raises(QueueFull):
            backend.enqueue_jobs_in(caller_connection, [rejected], bounds)
        still_usable = caller_connection.execute("SELECT 1").fetchone()

    assert still_usable == (1,)
    assert backend.get_job(first.message.id) is not None
    assert backend.get_job(rejected.message.id) is None
    assert backend.length("q") == 1
