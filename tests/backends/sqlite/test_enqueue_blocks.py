"""One-by-one enqueues insert into blocks of slots that a claim counted in the queue's length."""

from __future__ import annotations

import gc
import os
import sqlite3
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
from conformance_backends import FakeClock, job

from sluicegate.backends import sqlite_blocks
from sluicegate.backends.sqlite import SQLiteBackend
from sluicegate.backends.sqlite_blocks import MAX_BLOCK
from sluicegate.broker import QueueBounds
from sluicegate.errors import QueueFull

DEFAULT = QueueBounds()


@pytest.fixture
def other(db_path: Path, clock: FakeClock) -> Iterator[SQLiteBackend]:
    """A second backend on the same file, as in another process."""
    opened = SQLiteBackend(str(db_path), clock=clock)
    yield opened
    opened.close()


def queue_row(db_path: Path) -> tuple[int, int, int]:
    """Return the stored length, claim_gen and claims of queue 'q'."""
    with sqlite3.connect(db_path) as conn:
        row = conn.execute("SELECT length, claim_gen, claims FROM queues WHERE name = 'q'")
        length, claim_gen, claims = row.fetchone()
    return length, claim_gen, claims


def live_messages(db_path: Path) -> int:
    with sqlite3.connect(db_path) as conn:
        (count,) = conn.execute("SELECT count(*) FROM messages WHERE state != 3").fetchone()
    return int(count)


def test_first_enqueue_claims_a_block(
    backend: SQLiteBackend, clock: FakeClock, db_path: Path
) -> None:
    backend.enqueue_jobs([job(clock)], DEFAULT)
    backend.enqueue_jobs([job(clock)], DEFAULT)

    length, _, claims = queue_row(db_path)
    assert length == MAX_BLOCK
    assert claims == 1
    assert backend.length("q") == 2
    assert live_messages(db_path) == 2


def test_close_returns_unused_slots(
    backend: SQLiteBackend, clock: FakeClock, db_path: Path
) -> None:
    for _ in range(3):
        backend.enqueue_jobs([job(clock)], DEFAULT)

    backend.close()

    assert queue_row(db_path)[0] == 3


def test_unused_slots_never_reject(
    backend: SQLiteBackend, other: SQLiteBackend, clock: FakeClock, db_path: Path
) -> None:
    bounds = QueueBounds(max_length=64)
    backend.enqueue_jobs([job(clock)], bounds)  # Claims 4 slots: 3 stay unused.
    other.enqueue_jobs([job(clock) for _ in range(60)], bounds)
    first_length, first_claim_gen, _ = queue_row(db_path)
    assert first_length == 64

    # 61 messages: the unused slots of the first backend must not make this one fail.
    other.enqueue_jobs([job(clock)], bounds)

    length, claim_gen, claims = queue_row(db_path)
    assert length == 62
    assert claim_gen != first_claim_gen
    assert claims == 0


def test_bound_exact_with_blocks(
    backend: SQLiteBackend, other: SQLiteBackend, clock: FakeClock, db_path: Path
) -> None:
    bounds = QueueBounds(max_length=100)
    created = 0
    rejected = 0
    for turn in range(300):
        producer = backend if turn % 2 else other
        try:
            producer.enqueue_jobs([job(clock)], bounds)
        except QueueFull as full:
            assert full.retry_after > 0
            rejected += 1
        else:
            created += 1

    assert created == 100
    assert rejected == 200
    assert live_messages(db_path) == 100
    assert queue_row(db_path)[0] >= 100


def test_forked_child_claims_its_own_block(
    backend: SQLiteBackend, clock: FakeClock, db_path: Path
) -> None:
    bounds = QueueBounds(max_length=32)  # Blocks of 2 slots.
    backend.enqueue_jobs([job(clock)], bounds)  # The parent keeps one unused slot.

    pid = os.fork()
    if pid == 0:  # The child: enqueue one job, then leave without running atexit hooks.
        code = 1
        try:
            backend.enqueue_jobs([job(clock)], bounds)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    backend.enqueue_jobs([job(clock)], bounds)

    assert os.waitstatus_to_exitcode(status) == 0
    assert live_messages(db_path) == 3
    assert queue_row(db_path)[0] >= 3


@pytest.mark.parametrize("batch", [1, 4])
def test_rejection_keeps_recount(
    backend: SQLiteBackend, other: SQLiteBackend, clock: FakeClock, db_path: Path, batch: int
) -> None:
    bounds = QueueBounds(max_length=64)
    backend.enqueue_jobs([job(clock)], bounds)  # Claims 4 slots: 3 stay unused.
    other.enqueue_jobs([job(clock) for _ in range(60)], bounds)
    other.enqueue_jobs([job(clock) for _ in range(3)], bounds)  # Recounts: 61, then 64.
    backend.enqueue_jobs([job(clock)], QueueBounds(max_length=100))  # Claims again.
    _, claim_gen_before, _ = queue_row(db_path)

    with pytest.raises(QueueFull):
        other.enqueue_jobs([job(clock) for _ in range(batch)], bounds)

    # The rejection's recount was committed, so the next one needs none.
    length, claim_gen, claims = queue_row(db_path)
    assert length == 65
    assert claim_gen != claim_gen_before
    assert claims == 0


def test_expired_block_counts_its_enqueues(
    backend: SQLiteBackend, clock: FakeClock, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend.enqueue_jobs([job(clock)], DEFAULT)
    backend.enqueue_jobs([job(clock)], DEFAULT)
    block = backend._blocks["q"]
    monkeypatch.setattr(block, "expires", 0.0)

    backend.enqueue_jobs([job(clock)], DEFAULT)

    # The new claim gave back the old block's unused slots and counted its two enqueues.
    with sqlite3.connect(db_path) as conn:
        (enqueued,) = conn.execute(
            "SELECT enqueued_now + enqueued_before FROM queues WHERE name = 'q'"
        ).fetchone()
    assert queue_row(db_path)[0] == 2 + MAX_BLOCK
    assert enqueued == 3


def fill(backend: SQLiteBackend, clock: FakeClock, bounds: QueueBounds, batch: int = 1) -> None:
    """Enqueue ``batch`` jobs at a time until the queue rejects (at most 3 x max_length tries)."""
    for _ in range(bounds.max_length * 3):
        try:
            backend.enqueue_jobs([job(clock) for _ in range(batch)], bounds)
        except QueueFull:
            return
    raise AssertionError(f"queue never rejected past {bounds.max_length * 3} enqueues")


def test_block_of_deleted_row_is_void(
    backend: SQLiteBackend, clock: FakeClock, db_path: Path
) -> None:
    bounds = QueueBounds(max_length=1000)
    backend.enqueue_jobs([job(clock)], bounds)  # Holds a block of 62 unused slots.
    with sqlite3.connect(db_path) as conn:
        conn.execute("DELETE FROM messages")
        conn.execute("DELETE FROM queues")

    fill(backend, clock, bounds)

    assert live_messages(db_path) == 1000


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("claim_gen", "'abc'"),
        ("claim_gen", "9223372036854775807"),
        ("claim_gen", "1.5"),
        ("length", "'abc'"),
        ("length", "-50"),
        ("length", "10.5"),
        ("claims", "'abc'"),
    ],
)
@pytest.mark.parametrize("batch", [1, 5])
def test_corrupt_queue_row_recounted(
    backend: SQLiteBackend, clock: FakeClock, db_path: Path, column: str, value: str, batch: int
) -> None:
    bounds = QueueBounds(max_length=100)
    for _ in range(10):
        backend.enqueue_jobs([job(clock)], bounds)
    with sqlite3.connect(db_path) as conn:
        conn.execute(f"UPDATE queues SET {column} = {value}")

    fill(backend, clock, bounds, batch)

    assert live_messages(db_path) == 100


def test_idle_producer_returns_its_block(
    backend: SQLiteBackend, clock: FakeClock, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_blocks, "BLOCK_SECONDS", 0.2)
    for _ in range(3):
        backend.enqueue_jobs([job(clock)], DEFAULT)

    # No further enqueue: the returner thread gives the block back once it expires.
    deadline = time.monotonic() + 10.0
    while queue_row(db_path)[0] != 3 and time.monotonic() < deadline:
        time.sleep(0.02)

    with sqlite3.connect(db_path) as conn:
        (enqueued,) = conn.execute(
            "SELECT enqueued_now + enqueued_before FROM queues WHERE name = 'q'"
        ).fetchone()
    assert queue_row(db_path)[0] == 3
    assert enqueued == 3
    assert "q" not in backend._blocks


def test_exit_returns_blocks(tmp_path: Path) -> None:
    db = tmp_path / "exit.db"
    script = f"""
from sluicegate import App
app = App("sqlite:///{db}")
@app.task(queue="q")
def noop():
    pass
for _ in range(5):
    noop.enqueue()
"""

    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)

    assert queue_row(db)[0] == 5


def test_one_returner_thread_for_many_backends(tmp_path: Path, clock: FakeClock) -> None:
    backends = [SQLiteBackend(str(tmp_path / f"{i}.db"), clock=clock) for i in range(10)]
    for opened in backends:
        opened.enqueue_jobs([job(clock)], DEFAULT)
    names = [thread.name for thread in threading.enumerate()]
    first = weakref.ref(backends[0])

    # Dropped without close(): the returner must not keep the backend alive, though
    # its thread may hold it for the moment it looks at the blocks.
    del backends, opened
    deadline = time.monotonic() + 10.0
    while first() is not None and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)

    assert names.count("sluicegate-block-returner") == 1
    assert first() is None


class InterruptedAfterInsert:
    """A connection whose lone block inserts commit and then raise KeyboardInterrupt."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __getattr__(self, name: str) -> object:
        return getattr(self.conn, name)

    def execute(self, sql: str, *params: object) -> sqlite3.Cursor:
        cursor = self.conn.execute(sql, *params)  # type: ignore[arg-type]
        if "WHERE (SELECT claim_gen" in sql:
            raise KeyboardInterrupt
        return cursor


def test_interrupted_slot_stays_counted(
    backend: SQLiteBackend, clock: FakeClock, db_path: Path
) -> None:
    backend.enqueue_jobs([job(clock)], DEFAULT)  # Claims a block.
    real = backend._connection()
    backend._local.conn = InterruptedAfterInsert(real)

    with pytest.raises(KeyboardInterrupt):
        backend.enqueue_jobs([job(clock)], DEFAULT)

    backend._local.conn = real
    backend.close()
    assert live_messages(db_path) == 2
    assert queue_row(db_path)[0] >= 2
