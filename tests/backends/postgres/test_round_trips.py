"""Network round trips of the hot calls, counted from libpq's protocol trace.

A round trip is a turn from client messages to server messages in the trace.
Each backend here has a pool of one connection, so the traced connection is
the one the next call uses.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import pq

from sluicegate.backends.postgres import PostgresBackend
from sluicegate.broker import Action, QueueBounds, Settlement
from sluicegate.message import Delivery, OutgoingMessage, new_id
from sluicegate.store import JobState, JobUpdate, NewJob

BOUNDS = QueueBounds()
LEASE = 30.0

#: Calls made before counting, past psycopg's threshold for preparing a statement (5).
WARM_UP_CALLS = 6


@pytest.fixture
def producer(pg_url: str) -> Iterator[PostgresBackend]:
    backend = PostgresBackend(pg_url, pool_size=1)
    yield backend
    backend.close()


@pytest.fixture
def worker(pg_url: str) -> Iterator[PostgresBackend]:
    backend = PostgresBackend(pg_url, pool_size=1, durable=False)
    yield backend
    backend.close()


def new_job(key: str | None = None) -> NewJob:
    now = time.time()
    return NewJob(OutgoingMessage(new_id(), "q", b"{}", 0, now, now), "t", idempotency_key=key)


def ack(delivery: Delivery) -> Settlement:
    return Settlement(delivery, Action.ACK, JobUpdate(JobState.SUCCEEDED, result=b"1"))


def round_trips(backend: PostgresBackend, call: Callable[[], Any]) -> int:
    with tempfile.TemporaryFile("w+") as trace:
        with backend._get_pool().connection() as conn:
            conn.pgconn.trace(trace.fileno())
            conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
        try:
            call()
        finally:
            with backend._get_pool().connection() as conn:
                conn.pgconn.untrace()
        trace.seek(0)
        directions = [
            line[0]
            for line in trace.read().splitlines()
            if line[:2] in ("F\t", "B\t") and line[2:3].isdigit()
        ]
    turns = itertools.pairwise(directions)
    return sum(1 for before, after in turns if (before, after) == ("F", "B"))


def cycle(producer: PostgresBackend, worker: PostgresBackend) -> None:
    producer.enqueue_jobs([new_job()], BOUNDS)
    (delivery,) = worker.reserve(["q"], 8, LEASE, "w1")
    worker.exchange([ack(delivery)], ["q"], 8, LEASE, "w1")


def test_enqueue_one_round_trip(producer: PostgresBackend, worker: PostgresBackend) -> None:
    for _ in range(WARM_UP_CALLS):
        cycle(producer, worker)

    trips = round_trips(producer, lambda: producer.enqueue_jobs([new_job()], BOUNDS))

    assert trips == 1


def test_keyed_enqueue_still_one_transaction(producer: PostgresBackend) -> None:
    first = producer.enqueue_jobs([new_job("order-1")], BOUNDS)
    second = producer.enqueue_jobs([new_job("order-1")], BOUNDS)

    assert first[0].created is True
    assert second[0].created is False
    assert second[0].job_id == first[0].job_id


def test_exchange_round_trips(producer: PostgresBackend, worker: PostgresBackend) -> None:
    for _ in range(WARM_UP_CALLS):
        cycle(producer, worker)
    producer.enqueue_jobs([new_job()], BOUNDS)
    reserved: list[Delivery] = []

    reserve = round_trips(worker, lambda: reserved.extend(worker.reserve(["q"], 8, LEASE, "w1")))
    settle = round_trips(worker, lambda: worker.exchange([ack(reserved[0])], ["q"], 8, LEASE, "w1"))
    idle = round_trips(worker, lambda: worker.reserve(["q"], 8, LEASE, "w1"))

    assert len(reserved) == 1
    assert reserve == 2  # BEGIN, promote and reserve; COMMIT
    assert settle == 3  # BEGIN and ack; job update, counts, notify, promote, reserve; COMMIT
    assert idle == 2


def test_failed_pipeline_rolls_back(worker: PostgresBackend) -> None:
    def insert_then_fail(cursor: Any) -> None:
        cursor.execute(worker._sql["INSERT_VALUE"], ["left-behind", b"1"])
        cursor.execute(b"SELECT 1 / 0")

    with pytest.raises(psycopg.errors.DivisionByZero):
        worker._run(insert_then_fail, "test", pipeline=True)
    value = worker.get_value("left-behind")
    with worker._get_pool().connection() as conn:
        status = conn.info.transaction_status

    assert value is None
    assert status is pq.TransactionStatus.IDLE


def test_python_error_in_pipeline_rolls_back(worker: PostgresBackend) -> None:
    def insert_then_raise(cursor: Any) -> None:
        cursor.execute(worker._sql["INSERT_VALUE"], ["left-behind", b"1"])
        raise LookupError("raised by the operation")

    with pytest.raises(LookupError):
        worker._run(insert_then_raise, "test", pipeline=True)

    assert worker.get_value("left-behind") is None
