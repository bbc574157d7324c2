"""An enqueue admits and counts in one statement; bounds are stored and the row made once."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from conformance_backends import FakeClock, job

from sluicegate.backends.sqlite import SQLiteBackend
from sluicegate.broker import QueueBounds
from sluicegate.errors import QueueFull


def stored_bounds(db_path: Path) -> tuple[int | None, float | None]:
    with sqlite3.connect(db_path) as conn:
        row = conn.execute("SELECT max_length, max_wait FROM queues WHERE name = 'q'").fetchone()
    return row[0], row[1]


def test_changed_bounds_are_stored(backend: SQLiteBackend, clock: FakeClock, db_path: Path) -> None:
    backend.enqueue_jobs([job(clock)], QueueBounds(max_length=10))
    assert stored_bounds(db_path) == (10, None)

    backend.enqueue_jobs([job(clock)], QueueBounds(max_length=20, max_wait=60.0))

    assert stored_bounds(db_path) == (20, 60.0)
    assert backend.length("q") == 2


def test_undeclared_bounds_keep_the_stored_ones(
    backend: SQLiteBackend, clock: FakeClock, db_path: Path
) -> None:
    backend.enqueue_jobs([job(clock)], QueueBounds(max_length=10))

    backend.enqueue_jobs([job(clock)], QueueBounds(max_length=100, declared=False))

    assert stored_bounds(db_path) == (10, None)


def test_deleted_queue_row_made_again(
    backend: SQLiteBackend, clock: FakeClock, db_path: Path
) -> None:
    backend.enqueue_jobs([job(clock)], QueueBounds(max_length=10))
    with sqlite3.connect(db_path) as conn:
        conn.execute("DELETE FROM messages")
        conn.execute("DELETE FROM queues")

    backend.enqueue_jobs([job(clock)], QueueBounds(max_length=10))

    assert stored_bounds(db_path) == (10, None)
    assert backend.length("q") == 1


def test_full_queue_rejects_without_counting(backend: SQLiteBackend, clock: FakeClock) -> None:
    bounds = QueueBounds(max_length=2)
    backend.enqueue_jobs([job(clock), job(clock)], bounds)

    with pytest.raises(QueueFull) as refused:
        backend.enqueue_jobs([job(clock)], bounds)

    assert refused.value.retry_after > 0
    assert backend.length("q") == 2
