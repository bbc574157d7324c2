"""SQLite-only behaviour: job rows written at first reserve, and the version 1 upgrade.

The conformance suite checks what every backend returns. These tests check
the SQLite file itself: an enqueue writes no ``jobs`` row, the first reserve
or a cancel writes it, and a version 1 file is upgraded in place.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from conformance_backends import FakeClock, job, message

from sluicegate.backends.sqlite import SQLiteBackend
from sluicegate.backends.sqlite_schema import SCHEMA_VERSION
from sluicegate.broker import Action, QueueBounds, Settlement
from sluicegate.errors import ConfigurationError
from sluicegate.store import JobState, JobUpdate

BOUNDS = QueueBounds()
LEASE = 30.0
RETENTION = 100.0


def job_rows(db_path: Path) -> int:
    conn = sqlite3.connect(db_path)
    try:
        (count,) = conn.execute("SELECT count(*) FROM jobs").fetchone()
    finally:
        conn.close()
    return int(count)


def test_enqueue_writes_no_job_row(backend: SQLiteBackend, db_path: Path) -> None:
    new = job(backend.clock, idempotency_key="k1")

    backend.enqueue_jobs([new], BOUNDS)
    record = backend.get_job(new.message.id)

    assert job_rows(db_path) == 0
    assert record is not None
    assert record.state is JobState.QUEUED
    assert record.version == 1
    assert record.idempotency_key == "k1"
    assert [r.id for r in backend.get_jobs([new.message.id])] == [new.message.id]


def test_first_reserve_writes_job_row(
    backend: SQLiteBackend, db_path: Path, clock: FakeClock
) -> None:
    new = job(clock, idempotency_key="k1")
    backend.enqueue_jobs([new], BOUNDS)
    clock.advance(2)

    (delivery,) = backend.reserve(["q"], 1, LEASE, "w1")
    record = backend.get_job(new.message.id)

    assert job_rows(db_path) == 1
    assert delivery.cancel_requested is False
    assert record is not None
    assert record.state is JobState.RUNNING
    assert record.attempts == 1
    assert record.version == 2
    assert record.started_at == clock()
    assert record.created_at == new.message.enqueued_at
    assert record.eta == new.message.ready_at
    assert record.idempotency_key == "k1"


def test_redelivery_updates_job_row(
    backend: SQLiteBackend, db_path: Path, clock: FakeClock
) -> None:
    new = job(clock)
    backend.enqueue_jobs([new], BOUNDS)
    backend.reserve(["q"], 1, LEASE, "w1")
    clock.advance(LEASE + 1)

    backend.reserve(["q"], 1, LEASE, "w2")
    record = backend.get_job(new.message.id)

    assert job_rows(db_path) == 1
    assert record is not None
    assert record.state is JobState.RUNNING
    assert record.attempts == 2


def test_cancel_before_reserve_writes_row(
    backend: SQLiteBackend, db_path: Path, clock: FakeClock
) -> None:
    new = job(clock, delay=10)
    backend.enqueue_jobs([new], BOUNDS)

    record = backend.request_cancel(new.message.id, RETENTION)

    assert job_rows(db_path) == 1
    assert record is not None
    assert record.state is JobState.CANCELLED
    assert record.cancel_requested is True
    assert record.version == 2
    assert record.eta == new.message.ready_at
    assert backend.length("q") == 0


def test_plain_message_has_no_record(backend: SQLiteBackend, clock: FakeClock) -> None:
    plain = message(clock)
    backend.publish([plain], BOUNDS)

    assert backend.get_job(plain.id) is None
    assert backend.get_jobs([plain.id]) == []
    assert backend.request_cancel(plain.id, RETENTION) is None
    assert backend.length("q") == 1


def test_purged_dead_job_stays_unknown(backend: SQLiteBackend, clock: FakeClock) -> None:
    new = job(clock)
    backend.enqueue_jobs([new], BOUNDS)
    (delivery,) = backend.reserve(["q"], 1, LEASE, "w1")
    update = JobUpdate(JobState.FAILED, retention=RETENTION)
    assert backend.settle([Settlement(delivery, Action.DEAD, update, reason="x")]) == [True]
    clock.advance(RETENTION + 1)
    assert backend.purge_expired() == 1

    assert backend.retry_dead("q") == 1

    assert backend.get_job(new.message.id) is None


def make_version_1_file(db_path: Path, clock: FakeClock) -> str:
    """Turn a new file into a version 1 file holding one queued job, as version 1 wrote it."""
    SQLiteBackend(str(db_path), clock=clock).close()
    new = job(clock, idempotency_key="k1")
    m = new.message
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute("ALTER TABLE messages DROP COLUMN task")
        conn.execute("ALTER TABLE messages DROP COLUMN idempotency_key")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
        conn.execute(
            "INSERT INTO queues (name, length, max_length) VALUES (?, 1, ?)",
            (m.queue, BOUNDS.max_length),
        )
        conn.execute(
            "INSERT INTO messages (id, queue, state, prio, order_at, enqueued_at, body) "
            "VALUES (?, ?, 0, 0, ?, ?, ?)",
            (m.id, m.queue, m.ready_at, m.enqueued_at, m.body),
        )
        conn.execute(
            "INSERT INTO jobs (id, task, queue, state, created_at, eta, idempotency_key) "
            "VALUES (?, ?, ?, 'queued', ?, ?, ?)",
            (m.id, new.task, m.queue, m.enqueued_at, m.ready_at, "k1"),
        )
        conn.execute("INSERT INTO idempotency_keys (key, job_id) VALUES ('k1', ?)", (m.id,))
    finally:
        conn.close()
    return m.id


def test_version_1_file_upgraded(db_path: Path, clock: FakeClock) -> None:
    job_id = make_version_1_file(db_path, clock)

    backend = SQLiteBackend(str(db_path), clock=clock)
    try:
        conn = sqlite3.connect(db_path)
        try:
            (version,) = conn.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'"
            ).fetchone()
            columns = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
            queue_columns = {row[1] for row in conn.execute("PRAGMA table_info(queues)")}
        finally:
            conn.close()
        queued = backend.get_job(job_id)
        (duplicate,) = backend.enqueue_jobs([job(clock, idempotency_key="k1")], BOUNDS)
        (delivery,) = backend.reserve(["q"], 1, LEASE, "w1")
        running = backend.get_job(job_id)
    finally:
        backend.close()

    assert version == str(SCHEMA_VERSION)
    assert {"task", "idempotency_key"} <= columns
    assert {"claim_gen", "claims"} <= queue_columns
    assert queued is not None
    assert queued.state is JobState.QUEUED
    assert queued.version == 1
    assert duplicate.created is False
    assert duplicate.job_id == job_id
    assert delivery.message_id == job_id
    assert running is not None
    assert running.state is JobState.RUNNING
    assert running.attempts == 1
    assert running.version == 2
    assert job_rows(db_path) == 1


def test_newer_schema_rejected(db_path: Path, clock: FakeClock) -> None:
    SQLiteBackend(str(db_path), clock=clock).close()
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        newer = str(SCHEMA_VERSION + 1)
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (newer,))
    finally:
        conn.close()

    with pytest.raises(ConfigurationError, match="newer than this sluicegate"):
        SQLiteBackend(str(db_path), clock=clock)
