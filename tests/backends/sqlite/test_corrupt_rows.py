"""A message row corrupted in the file is dead-lettered at reserve; the others are served."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from conformance_backends import FakeClock, job

from sluicegate.backends.sqlite import SQLiteBackend
from sluicegate.broker import QueueBounds
from sluicegate.store import JobState

LEASE = 30.0


@pytest.mark.parametrize(
    ("column", "value", "problem"),
    [
        ("fence", "zz", "fence is not a non-negative integer ('zz')"),
        ("fence", -2, "fence is not a non-negative integer (-2)"),
        ("deliveries", "x", "deliveries is not a non-negative integer ('x')"),
        ("enqueued_at", "x", "enqueued_at is not a number ('x')"),
        ("body", "text", "body is not a blob (str)"),
    ],
)
def test_corrupt_row_dead_lettered(
    backend: SQLiteBackend,
    db_path: Path,
    clock: FakeClock,
    column: str,
    value: object,
    problem: str,
) -> None:
    jobs = [job(clock) for _ in range(5)]
    backend.enqueue_jobs(jobs, QueueBounds())
    corrupt = jobs[2].message.id
    with sqlite3.connect(db_path) as conn:
        conn.execute(f"UPDATE messages SET {column} = ? WHERE id = ?", (value, corrupt))
    clock.advance(2)

    deliveries = backend.reserve(["q"], 10, LEASE, "w1")
    letters = backend.dead_letters("q")
    record = backend.get_job(corrupt)

    assert [d.message_id for d in deliveries] == [j.message.id for j in jobs if j is not jobs[2]]
    assert [letter.message_id for letter in letters] == [corrupt]
    assert letters[0].reason == f"corrupt message: {problem}"
    assert record is not None
    assert record.state is JobState.FAILED
    assert record.error is not None
    assert record.error.message == f"corrupt message: {problem}"
    assert backend.reserve(["q"], 10, LEASE, "w1") == []
    (stats,) = backend.stats("q")
    assert stats.dead == 1
    assert stats.running == 4
