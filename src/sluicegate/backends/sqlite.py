"""Broker and store on one SQLite file in WAL mode, safe for many processes.

Durability: a producer's connection commits with ``synchronous=FULL``, so
``enqueue`` returns only after the WAL is on disk. A worker's connection uses
``synchronous=NORMAL``: a power loss can roll back its last settlements, and
the jobs then run again, which at-least-once delivery allows; it never loses
an enqueued job.

Concurrency: every write is one ``BEGIN IMMEDIATE`` transaction, which takes
SQLite's single write lock at once, so no transaction fails midway on a lock
upgrade. A busy database is waited on (SQLite's busy timeout, then a retry
loop with backoff); "database is locked" becomes ``StoreUnavailable`` only
after ``busy_timeout`` seconds in all.

Wake-up: see :mod:`sluicegate.backends._wakeup`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from sluicegate import _forks
from sluicegate.backends._exchange import ExchangeShortcuts
from sluicegate.backends._group_commit import GroupCommit
from sluicegate.backends._wakeup import Listener, Notifier, channel_dir
from sluicegate.backends.sqlite_blocks import RETURNER, Block, block_size, new_claim_gen
from sluicegate.backends.sqlite_schema import (
    BUCKET_SECONDS,
    DEAD,
    DELAYED,
    MESSAGE_COLUMNS_ADDED_IN_2,
    QUEUE_COLUMNS_ADDED_IN_3,
    READY,
    RESERVED,
    SCHEMA,
    SCHEMA_VERSION,
)
from sluicegate.backpressure import estimate_retry_after
from sluicegate.broker import (
    Action,
    DeadLetter,
    EnqueueResult,
    QueueBounds,
    QueueStats,
    Settlement,
)
from sluicegate.errors import ConfigurationError, QueueFull, StoreUnavailable
from sluicegate.message import Delivery, OutgoingMessage
from sluicegate.store import ErrorInfo, JobRecord, JobState, NewJob

logger = logging.getLogger(__name__)

_RATE_COLUMNS = "bucket, enqueued_now, enqueued_before, completed_now, completed_before"

_JOB_COLUMNS = (
    "id, task, queue, state, attempts, created_at, eta, started_at, finished_at, expires_at, "
    "result, error_type, error_message, error_traceback, cancel_requested, progress, "
    "progress_message, idempotency_key, note, version"
)
# A record past its retention reads as not found, even before purge_expired deletes it.
_UNEXPIRED = "(expires_at IS NULL OR expires_at > ?)"
# Stored states of a job whose message waits in its queue, which a cancel ends at once.
# A job deferred by a breaker or rate limit is stored as "scheduled".
_PENDING_JOB_STATES = ("scheduled", "queued", "retrying")

# A task message that was never delivered: its job has no jobs row yet.
_NO_JOB_ROW = "task IS NOT NULL AND fence = 0"
# The record of such a job, read from its message in the order of _JOB_COLUMNS.
_DERIVED_JOB_COLUMNS = (
    "id, task, queue, 'queued', 0, enqueued_at, order_at, NULL, NULL, NULL, "
    "NULL, NULL, NULL, NULL, 0, NULL, NULL, idempotency_key, NULL, 1"
)

# Delayed messages whose time has come. They count as ready in stats and in the
# max_wait check although only the next reserve moves them to the ready state.
_DUE_DELAYED = (
    f"SELECT count(*), min(due_at) FROM messages "
    f"WHERE state = {DELAYED} AND due_at <= ? AND queue = ?"
)

# Reserved messages whose lease expired: their next reserve gives them out again,
# so stats count them as ready, in their original place in the queue.
_EXPIRED_LEASES = (
    f"SELECT count(*), min(order_at) FROM messages "
    f"WHERE state = {RESERVED} AND due_at < ? AND queue = ?"
)


_INSERT_MESSAGE = (
    "INSERT INTO messages (id, queue, state, prio, order_at, due_at, enqueued_at, "
    "task, idempotency_key, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

# Key in ``meta`` of the listener generation, which grows by one whenever a
# wake-up listener binds (see sluicegate.backends._wakeup).
_WAKE_GENERATION = "wake_generation"

# Adds :e enqueued and :c completed messages to the current rate bucket, and
# rolls the buckets over first when :b, the current bucket, is newer. SQLite
# evaluates every SET expression on the row's old values, so the bucket
# comparisons all see the bucket before the update.
_COUNT_IN_BUCKETS = (
    "enqueued_before = CASE bucket WHEN :b THEN enqueued_before "
    "  WHEN :b - 1 THEN enqueued_now ELSE 0 END, "
    "completed_before = CASE bucket WHEN :b THEN completed_before "
    "  WHEN :b - 1 THEN completed_now ELSE 0 END, "
    "enqueued_now = (CASE bucket WHEN :b THEN enqueued_now ELSE 0 END) + :e, "
    "completed_now = (CASE bucket WHEN :b THEN completed_now ELSE 0 END) + :c, "
    "bucket = :b"
)

# Counts :e new messages in the queue's length and enqueue rate if they fit
# under :max. It returns no row if they do not fit or the queue's row is missing.
# The second value returned is the listener generation (see _wakeup), read here
# rather than by a statement of its own.
_ADMIT_AND_COUNT = (
    f"UPDATE queues SET {_COUNT_IN_BUCKETS}, length = length + :e "
    "WHERE name = :q AND typeof(length) = 'integer' AND length >= 0 AND length + :e <= :max "
    f"RETURNING length, (SELECT value FROM meta WHERE key = '{_WAKE_GENERATION}')"
)


# A lone message in a slot of a block: inserted only if the block is still valid
# and the listener generation is the one this process last read.
_INSERT_IN_BLOCK = (
    "INSERT INTO messages (id, queue, state, prio, order_at, due_at, enqueued_at, "
    "task, idempotency_key, body) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ? "
    "WHERE (SELECT claim_gen FROM queues WHERE name = ?) = ? "
    f"AND (SELECT value FROM meta WHERE key = '{_WAKE_GENERATION}') IS ?"
)

_CLAIM_AND_WAKE_GENERATIONS = (
    f"SELECT claim_gen, (SELECT value FROM meta WHERE key = '{_WAKE_GENERATION}') "
    "FROM queues WHERE name = ?"
)

_QUEUE_FOR_CLAIM = (
    f"SELECT length, claim_gen, claims, (SELECT value FROM meta WHERE key = '{_WAKE_GENERATION}') "
    "FROM queues WHERE name = ?"
)


def _is_count(value: object) -> bool:
    """Return whether a stored counter is a non-negative integer."""
    return type(value) is int and value >= 0


#: Seconds close() waits for running enqueues before it gives back the blocks.
RETURN_WAIT_SECONDS = 5.0


def parse_path(url: str) -> str:
    """Return the file path of a ``sqlite:///relative`` or ``sqlite:////absolute`` URL."""
    prefix = "sqlite://"
    if not url.startswith(prefix):
        raise ConfigurationError(f"not a sqlite URL: {url!r}")
    rest = url[len(prefix) :]
    if not rest.startswith("/") or len(rest) < 2 or rest.endswith("/"):
        raise ConfigurationError(
            f"invalid sqlite URL {url!r}; use sqlite:///relative/path.db "
            "or sqlite:////absolute/path.db"
        )
    path = rest[1:]
    if path == ":memory:" or path.startswith("file:"):
        raise ConfigurationError(
            f"sqlite URL {url!r} names no file; workers and producers in other processes "
            "must share one database file, so give a path"
        )
    if "?" in path:
        raise ConfigurationError(f"sqlite URL {url!r} takes no query options; give a plain path")
    return path


#: Page cache of each connection, in KiB (SQLite's default is 2,000). The
#: operating system caches the file too, so a smaller cache costs few reads:
#: with 512 KiB a worker drained as fast as with the default and peaked
#: 1.5 MiB lower (benchmarks/sqlite_vs_huey.py).
PAGE_CACHE_KIB = 512


class SQLiteBackend(ExchangeShortcuts):
    """Broker and store on one SQLite database file.

    Parameters:
      path: the database file; created with its schema if missing.
      durable: commit with ``synchronous=FULL`` (producers) rather than
        ``NORMAL`` (workers, whose lost settlements only cause re-runs).
      busy_timeout: seconds a write may wait for the lock before giving up.
      clock: returns the current Unix time; tests pass a controllable one.
    """

    def __init__(
        self,
        path: str,
        *,
        durable: bool = True,
        busy_timeout: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = os.path.abspath(path)  # A later chdir must not switch databases.
        self.durable = durable
        self.busy_timeout = busy_timeout
        self.clock = clock
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        # Threads of this process take turns at the write lock here rather than in
        # SQLite's busy handler, which sleeps up to 100 ms between tries.
        self._write_turn = threading.RLock()
        self._generation = _forks.generation
        # Bounds this process stored in each queue's row: enqueues with the same
        # bounds skip rewriting them.
        self._stored_bounds: dict[str, QueueBounds] = {}
        # The listener generation read by the latest enqueue of this process.
        self._wake_generation: object = None
        # Blocks of slots this process claimed in each queue's length (see sqlite_blocks).
        self._blocks: dict[str, Block] = {}
        self._wake_dir = channel_dir(path)
        self._commits = GroupCommit(self._begin, self._finish, self.clock, self._after_group_commit)
        self._notifier = Notifier(self._wake_dir)
        self._result_notifier = Notifier(self._wake_dir + "-results")
        try:
            self._create_schema()
        except sqlite3.DatabaseError as exc:
            self.close()
            raise ConfigurationError(
                f"cannot use {self.path} as a SQLite database: {exc}; it must be a SQLite "
                "file (or a new path) on a local disk"
            ) from exc

    # -- connections and transactions

    def _connection(self) -> sqlite3.Connection:
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is None or local.generation != _forks.generation:
            conn = self._connect()
            local.conn = conn
            local.generation = _forks.generation
        return conn

    def _connect(self) -> sqlite3.Connection:
        directory = os.path.dirname(self.path)
        try:
            os.makedirs(directory, exist_ok=True)
            conn = sqlite3.connect(
                self.path,
                timeout=min(self.busy_timeout, 5.0),
                isolation_level=None,
                check_same_thread=False,
            )
            self._retry_busy(lambda: conn.execute("PRAGMA journal_mode=WAL"))
        except (OSError, sqlite3.DatabaseError) as exc:
            raise ConfigurationError(
                f"cannot open SQLite database {self.path}: {exc}; check that the path is a "
                "writable file in a writable directory on a local disk"
            ) from exc
        conn.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
        conn.execute("PRAGMA foreign_keys=OFF")
        conn.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    def _retry_busy(self, operation: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.001
        while True:
            try:
                return operation()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise StoreUnavailable(
                        f"SQLite database {self.path} stayed locked for "
                        f"{self.busy_timeout:g}s; another process holds a long write"
                    ) from exc
                logger.debug("database busy, retrying path=%s delay_s=%.3f", self.path, delay)
                time.sleep(random.uniform(0, delay))
                delay = min(delay * 2, 0.1)

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """Run the body in one ``BEGIN IMMEDIATE`` transaction; commit or roll back."""
        conn = self._begin()
        try:
            yield conn
        except BaseException:
            self._finish(conn, False)
            raise
        self._finish(conn, True)

    def _check_fork(self) -> None:
        """In a forked child, drop the parent's write turn and blocks of slots."""
        if self._generation != _forks.generation:
            # The parent's threads are gone, and its blocks stay the parent's to use.
            self._write_turn, self._blocks = threading.RLock(), {}
            self._generation = _forks.generation

    def _execute_waiting(self, conn: sqlite3.Connection, sql: str) -> None:
        """Execute ``sql``, waiting out a busy database as :meth:`_retry_busy` does.

        The first try runs without the retry loop's closure and clock reads.
        """
        try:
            conn.execute(sql)
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            self._retry_busy(lambda: conn.execute(sql))

    def _begin(self) -> sqlite3.Connection:
        """Take this process's write turn, then open a ``BEGIN IMMEDIATE`` transaction.

        :meth:`_finish` ends the transaction and gives the turn back.
        """
        conn = self._connection()
        self._check_fork()
        self._write_turn.acquire()
        try:
            self._execute_waiting(conn, "BEGIN IMMEDIATE")
        except BaseException:
            self._write_turn.release()
            raise
        return conn

    def _finish(self, conn: sqlite3.Connection, commit: bool) -> None:
        """Commit or roll back the transaction :meth:`_begin` opened, and end the write turn."""
        try:
            if not commit:
                conn.execute("ROLLBACK")
                return
            self._execute_waiting(conn, "COMMIT")
        except BaseException:
            # A commit that failed for good leaves nothing half done for the next
            # transaction on this connection.
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        finally:
            self._write_turn.release()

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        conn = self._connection()
        rows: list[Any] = self._retry_busy(lambda: conn.execute(sql, params).fetchall())
        return rows

    def _create_schema(self) -> None:
        conn = self._connection()

        def create() -> None:
            try:
                conn.executescript(f"BEGIN IMMEDIATE; {SCHEMA} COMMIT;")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        self._retry_busy(create)
        with self._write() as txn:
            stored = txn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if stored is not None and int(stored[0]) > SCHEMA_VERSION:
                raise ConfigurationError(
                    f"{self.path} has schema version {stored[0]}, newer than this sluicegate "
                    f"({SCHEMA_VERSION}); upgrade sluicegate"
                )
            columns = {row[1] for row in txn.execute("PRAGMA table_info(jobs)")}
            if "version" not in columns:  # A file made before jobs had a version column.
                txn.execute("ALTER TABLE jobs ADD COLUMN version INTEGER NOT NULL DEFAULT 1")
            # NOTE: a version 1 worker still running on an upgraded file finds no jobs
            # row for new jobs and loses their records, so stop all processes first.
            columns = {row[1] for row in txn.execute("PRAGMA table_info(messages)")}
            for column in MESSAGE_COLUMNS_ADDED_IN_2:
                if column not in columns:
                    txn.execute(f"ALTER TABLE messages ADD COLUMN {column} TEXT")
            columns = {row[1] for row in txn.execute("PRAGMA table_info(queues)")}
            for column, definition in QUEUE_COLUMNS_ADDED_IN_3:
                if column not in columns:
                    txn.execute(f"ALTER TABLE queues ADD COLUMN {column} {definition}")
            upgraded = stored is not None and int(stored[0]) < SCHEMA_VERSION
            if stored is None or upgraded:
                txn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
        if upgraded:
            logger.info(
                "SQLite schema upgraded path=%s from_version=%s to_version=%d",
                self.path,
                stored[0],
                SCHEMA_VERSION,
            )

    def close(self) -> None:
        """Give back unused enqueue slots, then close every connection this backend opened."""
        RETURNER.forget(self)
        self._return_all_blocks(RETURN_WAIT_SECONDS)
        with self._connections_lock:
            for conn in self._connections:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._connections.clear()
        self._local = threading.local()
        self._notifier.close()
        self._result_notifier.close()

    # -- enqueue

    def _after_group_commit(self, ready: bool) -> None:
        if ready:
            self._notifier.notify_generation(self._wake_generation)

    def enqueue_jobs(self, jobs: Sequence[NewJob], bounds: QueueBounds) -> list[EnqueueResult]:
        """Create jobs and their messages in one transaction, all or none.

        A job whose idempotency key exists already is not created; its result
        names the existing job. Raises ``QueueFull`` if the new messages do
        not fit under ``bounds``.
        """
        if not jobs:
            return []

        def enqueue(
            conn: sqlite3.Connection, now: float
        ) -> tuple[list[EnqueueResult] | QueueFull, bool]:
            results, fresh = self._match_idempotency_keys(conn, jobs, now)
            if not fresh:
                return results, False
            full = self._admit(conn, fresh[0].message.queue, len(fresh), bounds, now)
            if full is not None:
                return full, False
            # No jobs row yet: the record is derived from the message until a
            # worker reserves it (see sqlite_schema).
            self._insert_messages(
                conn, [_message_row(j.message, now, j.task, j.idempotency_key) for j in fresh]
            )
            keyed = [(j.idempotency_key, j.message.id) for j in fresh if j.idempotency_key]
            if keyed:
                # REPLACE takes over the key of a job whose retention ended.
                conn.executemany(
                    "INSERT OR REPLACE INTO idempotency_keys (key, job_id) VALUES (?, ?)",
                    keyed,
                )
            return results, any(j.message.ready_at <= now for j in fresh)

        first = jobs[0]
        alone: Callable[[], list[EnqueueResult]] | None = None
        if len(jobs) == 1 and first.idempotency_key is None and bounds.max_wait is None:
            created = [EnqueueResult(first.message.id, created=True)]

            def alone() -> list[EnqueueResult]:
                self._enqueue_alone(first.message, first.task, bounds)
                return created

        outcome = self._commits.run(enqueue, alone)
        if isinstance(outcome, QueueFull):
            raise outcome
        return outcome

    def publish(self, messages: Sequence[OutgoingMessage], bounds: QueueBounds) -> None:
        """Add plain messages (no job records) to one queue, all or none."""
        if not messages:
            return

        def publish(conn: sqlite3.Connection, now: float) -> tuple[QueueFull | None, bool]:
            full = self._admit(conn, messages[0].queue, len(messages), bounds, now)
            if full is not None:
                return full, False
            self._insert_messages(conn, [_message_row(m, now) for m in messages])
            return None, any(m.ready_at <= now for m in messages)

        alone: Callable[[], None] | None = None
        if len(messages) == 1 and bounds.max_wait is None:

            def alone() -> None:
                self._enqueue_alone(messages[0], None, bounds)

        full = self._commits.run(publish, alone)
        if full is not None:
            raise full

    def _enqueue_alone(
        self, message: OutgoingMessage, task: str | None, bounds: QueueBounds
    ) -> None:
        """Add one message, in a slot of this process's block when it has one.

        The caller leads the group commit and no other enqueue of this process
        runs meanwhile. A slot costs a lone ``INSERT`` in its own implicit
        transaction, checked against the block's ``claim_gen`` and the listener
        generation. Without a usable slot, :meth:`_claim_and_insert` runs.
        """
        self._check_fork()
        block = self._blocks.get(message.queue)
        if (
            block is not None
            and block.bounds is bounds
            and block.left > 0
            and time.monotonic() < block.expires
            and self._insert_in_block(message, task, block)
        ):
            return
        self._claim_and_insert(message, task, bounds)

    def _insert_in_block(self, message: OutgoingMessage, task: str | None, block: Block) -> bool:
        """Insert ``message`` in a slot of ``block``, or return False for the slow path."""
        conn = self._connection()
        row = _message_row(message, self.clock(), task)
        for _ in range(2):
            # The slot counts as used before the insert: an interrupt (KeyboardInterrupt,
            # a signal handler's exit) after its commit must not leave it free to give
            # back. A slot wrongly kept only overcounts, which the bound allows.
            block.left -= 1
            block.used += 1
            with self._write_turn:
                try:
                    cursor = conn.execute(
                        _INSERT_IN_BLOCK,
                        (*row, message.queue, block.claim_gen, self._wake_generation),
                    )
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc):
                        raise
                    block.left += 1  # Nothing was inserted.
                    block.used -= 1
                    return False  # The slow path waits out the lock.
            if cursor.rowcount == 1:
                if row[2] == READY:
                    self._notifier.notify_generation(self._wake_generation)
                return True
            block.left += 1  # The guard stopped the insert.
            block.used -= 1
            # The block is void, or a listener bound since this process last looked.
            current = self._read(_CLAIM_AND_WAKE_GENERATIONS, (message.queue,))
            if not current or current[0][0] != block.claim_gen:
                return False
            self._wake_generation = current[0][1]
        return False

    def _claim_and_insert(
        self, message: OutgoingMessage, task: str | None, bounds: QueueBounds
    ) -> None:
        """Claim a new block of slots (or one slot near the bound) and insert ``message``.

        The unused slots of the previous block go back in the same transaction,
        and its used ones are counted in the enqueue rate.
        """
        queue = message.queue
        previous = self._blocks.pop(queue, None)
        full: QueueFull | None = None
        size = 1
        conn = self._begin()
        try:
            now = self.clock()
            stored = self._stored_bounds.get(queue)
            if stored is not bounds and stored != bounds:
                self._store_bounds(conn, queue, bounds)
            row = conn.execute(_QUEUE_FOR_CLAIM, (queue,)).fetchone()
            if row is None:
                self._store_bounds(conn, queue, bounds)
                row = conn.execute(_QUEUE_FOR_CLAIM, (queue,)).fetchone()
            length, claim_gen, claims, wake_generation = row
            if not (_is_count(length) and _is_count(claims) and type(claim_gen) is int):
                logger.warning(
                    "queue row corrupt, recounting queue=%s length=%r claim_gen=%r claims=%r",
                    queue,
                    length,
                    claim_gen,
                    claims,
                )
                length, claim_gen = self._recount(conn, queue)
                claims = 0
            returned = 0
            if previous is not None and previous.claim_gen == claim_gen:
                returned = previous.left
            length -= returned
            if length + 1 > bounds.max_length and claims:
                length, claim_gen = self._recount(conn, queue)
                returned = 0
            if length + 1 > bounds.max_length:
                excess = length + 1 - bounds.max_length
                retry_after = self._retry_after(conn, queue, excess, now)
                full = QueueFull(queue, "max_length", bounds.max_length, retry_after)
            else:
                size = block_size(bounds.max_length - length)
                conn.execute(
                    f"UPDATE queues SET {_COUNT_IN_BUCKETS}, length = length - :r + :n, "
                    "claims = claims + (:n > 1) WHERE name = :q",
                    {
                        "b": _bucket(now),
                        "e": 1 + (previous.used if previous is not None else 0),
                        "c": 0,
                        "r": returned,
                        "n": size,
                        "q": queue,
                    },
                )
                conn.execute(_INSERT_MESSAGE, _message_row(message, now, task))
        except BaseException:
            self._finish(conn, False)
            if previous is not None:
                self._blocks[queue] = previous
            raise
        # A rejection commits too: a recount it made spares the next rejection one.
        self._finish(conn, True)
        if full is not None:
            if previous is not None and previous.claim_gen == claim_gen:
                self._blocks[queue] = previous
            raise full
        if size > 1:
            self._blocks[queue] = Block(bounds, claim_gen, size - 1)
            RETURNER.claimed(self)
        self._wake_generation = wake_generation
        if message.ready_at <= now:
            self._notifier.notify_generation(wake_generation)

    def _recount(self, conn: sqlite3.Connection, queue: str) -> tuple[int, int]:
        """Set the queue's length to its live messages and void every block.

        Returns the length and the new ``claim_gen``. Recounting also repairs
        a length or ``claim_gen`` that is not a valid count.
        """
        (length,) = conn.execute(
            f"SELECT count(*) FROM messages WHERE queue = ? AND state != {DEAD}", (queue,)
        ).fetchone()
        claim_gen = new_claim_gen()
        conn.execute(
            "UPDATE queues SET length = ?, claim_gen = ?, claims = 0 WHERE name = ?",
            (length, claim_gen, queue),
        )
        logger.info("queue length recounted queue=%s length=%d", queue, length)
        return int(length), claim_gen

    def _return_expired_blocks(self) -> tuple[bool, float | None]:
        """Give back the expired blocks if no enqueue runs; see ``sqlite_blocks.BlockHolder``."""
        # A look without the group commit: enqueues may change the blocks meanwhile,
        # which at worst delays a return to the next wake-up.
        expiries = [block.expires for block in list(self._blocks.values())]
        if not expiries or min(expiries) > time.monotonic():
            return True, min(expiries, default=None)
        next_expiry: list[float | None] = [None]

        def give_back() -> None:
            next_expiry[0] = self._return_blocks(expired_only=True)

        return self._commits.run_if_idle(give_back), next_expiry[0]

    def _return_all_blocks(self, wait: float) -> None:
        """Give back every block once the enqueues running now end, waiting up to ``wait`` s."""
        deadline = time.monotonic() + wait

        def give_back() -> None:
            self._return_blocks()

        while not self._commits.run_if_idle(give_back):
            if time.monotonic() >= deadline:
                logger.warning(
                    "unused enqueue slots not returned: enqueues still running path=%s",
                    self.path,
                )
                return
            time.sleep(0.01)

    def _return_blocks(self, expired_only: bool = False) -> float | None:
        """Give back the unused slots of this process's blocks, and count the used ones.

        With ``expired_only``, only blocks past their time are given back.
        Returns the monotonic time at which the next kept block expires, or None.
        """
        if self._generation != _forks.generation:
            return None  # The blocks belong to the parent process.
        now = time.monotonic()
        blocks = {
            queue: block
            for queue, block in self._blocks.items()
            if not expired_only or block.expires <= now
        }
        for queue in blocks:
            del self._blocks[queue]
        next_expiry = min((block.expires for block in self._blocks.values()), default=None)
        if not blocks:
            return next_expiry
        try:
            with self._write() as conn:
                now = self.clock()
                for queue, block in blocks.items():
                    conn.execute(
                        f"UPDATE queues SET {_COUNT_IN_BUCKETS}, length = length - :r "
                        "WHERE name = :q AND claim_gen = :g",
                        {
                            "b": _bucket(now),
                            "e": block.used,
                            "c": 0,
                            "r": block.left,
                            "q": queue,
                            "g": block.claim_gen,
                        },
                    )
        except (sqlite3.Error, StoreUnavailable) as exc:
            # The slots stay counted until an enqueue near the bound recounts the queue.
            logger.warning(
                "unused enqueue slots not returned path=%s queues=%s error=%s",
                self.path,
                ",".join(blocks),
                exc,
            )
        return next_expiry

    def _match_idempotency_keys(
        self, conn: sqlite3.Connection, jobs: Sequence[NewJob], now: float
    ) -> tuple[list[EnqueueResult], list[NewJob]]:
        results: list[EnqueueResult] = []
        fresh: list[NewJob] = []
        seen: dict[str, str] = {}
        for job in jobs:
            key = job.idempotency_key
            existing = seen.get(key) if key is not None else None
            if key is not None and existing is None:
                # A key lasts as long as its job's record is readable: a jobs row
                # not past its retention, or a message the record is derived from.
                row = conn.execute(
                    "SELECT job_id FROM idempotency_keys WHERE key = ? AND ("
                    f"EXISTS (SELECT 1 FROM jobs WHERE id = job_id AND {_UNEXPIRED}) OR "
                    f"EXISTS (SELECT 1 FROM messages WHERE id = job_id AND {_NO_JOB_ROW}))",
                    (key, now),
                ).fetchone()
                existing = row[0] if row else None
            if existing is not None:
                results.append(EnqueueResult(existing, created=False))
                continue
            if key is not None:
                seen[key] = job.message.id
            results.append(EnqueueResult(job.message.id, created=True))
            fresh.append(job)
        return results, fresh

    def _admit(
        self, conn: sqlite3.Connection, queue: str, count: int, bounds: QueueBounds, now: float
    ) -> QueueFull | None:
        """Admit ``count`` new messages under ``bounds`` and count them in the queue's row.

        The common case is one statement: the update that counts the messages
        also checks the bound. Storing changed bounds, creating the row and
        rejecting take the slower path. A rejection for ``max_length`` is
        returned rather than raised: the transaction then wrote nothing but a
        recount and the bounds, which the caller commits so that the next
        rejection finds the length exact. ``max_wait`` raises ``QueueFull``.
        """
        stored = self._stored_bounds.get(queue)
        if stored is not bounds and stored != bounds:
            self._store_bounds(conn, queue, bounds)
        params = {"b": _bucket(now), "e": count, "c": 0, "q": queue, "max": bounds.max_length}
        row = conn.execute(_ADMIT_AND_COUNT, params).fetchone()
        if row is None:
            # The row is missing (deleted since this process stored it) or the queue is full.
            self._store_bounds(conn, queue, bounds)
            row = conn.execute(_ADMIT_AND_COUNT, params).fetchone()
            if row is None:
                length, claims = conn.execute(
                    "SELECT length, claims FROM queues WHERE name = ?", (queue,)
                ).fetchone()
                # Unused slots of blocks may fill the length, or the length is corrupt:
                # count the messages.
                if claims or not _is_count(length):
                    self._recount(conn, queue)
                    row = conn.execute(_ADMIT_AND_COUNT, params).fetchone()
            if row is None:
                (length,) = conn.execute(
                    "SELECT length FROM queues WHERE name = ?", (queue,)
                ).fetchone()
                excess = length + count - bounds.max_length
                retry_after = self._retry_after(conn, queue, excess, now)
                return QueueFull(queue, "max_length", bounds.max_length, retry_after)
        self._wake_generation = row[1]
        if bounds.max_wait is not None:
            oldest = self._oldest_ready(conn, queue, now)
            if oldest is not None and now - oldest > bounds.max_wait:
                retry_after = self._retry_after(conn, queue, row[0] - count, now)
                raise QueueFull(queue, "max_wait", bounds.max_wait, retry_after)
        return None

    def _store_bounds(self, conn: sqlite3.Connection, queue: str, bounds: QueueBounds) -> None:
        """Create the queue's row if missing, and store declared bounds for display."""
        stored = (bounds.max_length, bounds.max_wait) if bounds.declared else (None, None)
        # A new row gets a claim_gen no block can hold, even if an earlier row of the
        # same name was deleted while a process held a block of it.
        conn.execute(
            "INSERT INTO queues (name, max_length, max_wait, claim_gen) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET "
            "max_length = CASE WHEN ? THEN excluded.max_length ELSE max_length END, "
            "max_wait = CASE WHEN ? THEN excluded.max_wait ELSE max_wait END",
            (queue, *stored, new_claim_gen(), bounds.declared, bounds.declared),
        )
        # Noted before the commit: a rollback only makes the next enqueue store them again.
        self._stored_bounds[queue] = bounds

    def _retry_after(self, conn: sqlite3.Connection, queue: str, excess: int, now: float) -> float:
        row = conn.execute(f"SELECT {_RATE_COLUMNS} FROM queues WHERE name = ?", (queue,))
        _, completed, window = _recent_counts(row.fetchone(), now)
        return estimate_retry_after(excess, completed, window)

    @staticmethod
    def _oldest_ready(conn: sqlite3.Connection, queue: str, now: float) -> float | None:
        row = conn.execute(
            "SELECT min(order_at) FROM messages WHERE queue = ? AND state = ?", (queue, READY)
        ).fetchone()
        _, oldest_due = conn.execute(_DUE_DELAYED, (now, queue)).fetchone()
        return _earliest(row[0], oldest_due)

    @staticmethod
    def _insert_messages(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
        """Insert new messages, which :meth:`_admit` counted already."""
        if len(rows) == 1:
            conn.execute(_INSERT_MESSAGE, rows[0])
        else:
            conn.executemany(_INSERT_MESSAGE, rows)

    @staticmethod
    def _add_completed(conn: sqlite3.Connection, queue: str, now: float, count: int) -> None:
        """Add ``count`` completed messages of ``queue`` to its rate bucket."""
        conn.execute(
            f"UPDATE queues SET {_COUNT_IN_BUCKETS} WHERE name = :q",
            {"b": _bucket(now), "e": 0, "c": count, "q": queue},
        )

    # -- reserve, settle, extend

    def exchange(
        self,
        settlements: Sequence[Settlement],
        queues: Sequence[str],
        limit: int,
        lease: float,
        worker: str,
    ) -> tuple[list[bool], list[Delivery]]:
        """Settle and reserve as :meth:`Backend.exchange` describes, in one transaction."""
        if not settlements and (limit <= 0 or not queues):
            return [], []
        requeued = False
        with self._write() as conn:
            # Read inside the transaction: waiting for the write lock must not shorten leases.
            now = self.clock()
            settled = [self._settle_one(conn, s, now) for s in settlements]
            self._count_completed(conn, settlements, settled, now)
            requeued = any(
                ok and s.action in (Action.RETRY, Action.RELEASE, Action.DEFER)
                for ok, s in zip(settled, settlements, strict=True)
            )
            deliveries: list[Delivery] = []
            if limit > 0 and queues:
                self._promote_due(conn, now)
                deliveries = self._reserve(conn, queues, limit, lease, worker, now)
        if requeued:
            self._notifier.notify()
        if any(s.job is not None and s.job.state.is_final for s in settlements):
            self._result_notifier.notify()
        return settled, deliveries

    def _settle_one(self, conn: sqlite3.Connection, settlement: Settlement, now: float) -> bool:
        delivery = settlement.delivery
        key = (delivery.message_id, delivery.fence, RESERVED, now)
        fenced = "WHERE id = ? AND fence = ? AND state = ? AND due_at >= ?"
        action = settlement.action
        if action is Action.ACK:
            cursor = conn.execute(f"DELETE FROM messages {fenced}", key)
        elif action in (Action.RETRY, Action.DEFER) and settlement.delay > 0:
            ready_at = now + settlement.delay
            uncount = 1 if action is Action.DEFER else 0
            cursor = conn.execute(
                f"UPDATE messages SET state = {DELAYED}, due_at = ?, order_at = ?, worker = NULL, "
                f"deliveries = deliveries - ? {fenced}",
                (ready_at, ready_at, uncount, *key),
            )
        elif action in (Action.RETRY, Action.RELEASE, Action.DEFER):
            keep_place = 1 if action is Action.RELEASE else 0
            uncount = 0 if action is Action.RETRY else 1
            cursor = conn.execute(
                f"UPDATE messages SET state = {READY}, due_at = NULL, worker = NULL, "
                f"order_at = CASE WHEN ? THEN order_at ELSE ? END, deliveries = deliveries - ? "
                f"{fenced}",
                (keep_place, now, uncount, *key),
            )
        else:
            cursor = conn.execute(
                f"UPDATE messages SET state = {DEAD}, due_at = NULL, worker = NULL, reason = ?, "
                f"dead_at = ? {fenced}",
                (settlement.reason or "dead-lettered", now, *key),
            )
        if cursor.rowcount != 1:
            return False
        if settlement.job is not None:
            self._update_job(conn, delivery.message_id, settlement, now)
        return True

    def _count_completed(
        self,
        conn: sqlite3.Connection,
        settlements: Sequence[Settlement],
        settled: Sequence[bool],
        now: float,
    ) -> None:
        completed: dict[str, int] = {}
        for settlement, ok in zip(settlements, settled, strict=True):
            if ok and settlement.action in (Action.ACK, Action.DEAD):
                queue = settlement.delivery.queue
                completed[queue] = completed.get(queue, 0) + 1
        for queue, count in completed.items():
            self._add_completed(conn, queue, now, count)

    @staticmethod
    def _update_job(
        conn: sqlite3.Connection, job_id: str, settlement: Settlement, now: float
    ) -> None:
        update = settlement.job
        assert update is not None
        error = update.error or ErrorInfo("", "")
        final = update.state.is_final
        succeeded = update.state is JobState.SUCCEEDED
        conn.execute(
            "UPDATE jobs SET state = ?, version = version + 1, result = coalesce(?, result), "
            "error_type = CASE WHEN ? THEN NULL WHEN ? != '' THEN ? ELSE error_type END, "
            "error_message = CASE WHEN ? THEN NULL WHEN ? != '' THEN ? ELSE error_message END, "
            "error_traceback = CASE WHEN ? THEN NULL WHEN ? != '' THEN ? "
            "  ELSE error_traceback END, "
            "note = CASE WHEN ? IS NULL THEN note ELSE nullif(?, '') END, "
            "finished_at = ?, expires_at = ?, attempts = attempts - ?, "
            "eta = CASE WHEN ? THEN ? ELSE eta END WHERE id = ?",
            (
                update.state.value,
                update.result,
                # A success clears the error of an earlier attempt, a new error replaces
                # it whole, and an update without one keeps it.
                succeeded,
                error.type,
                error.type,
                succeeded,
                error.type,
                error.message,
                succeeded,
                error.type,
                error.traceback,
                update.note,  # None keeps the note, "" clears it
                update.note,
                now if final else None,
                now + update.retention if final else None,
                0 if update.count_attempt else 1,
                # A retried or deferred job's eta is when it is due again.
                settlement.action in (Action.RETRY, Action.DEFER),
                now + settlement.delay,
                job_id,
            ),
        )

    def _promote_due(self, conn: sqlite3.Connection, now: float) -> None:
        conn.execute(
            f"UPDATE messages SET state = {READY}, due_at = NULL "
            f"WHERE state = {DELAYED} AND due_at <= ?",
            (now,),
        )
        expired = conn.execute(
            # worker keeps the old holder, for this log line; the next reserve replaces it.
            f"UPDATE messages SET state = {READY}, due_at = NULL "
            f"WHERE state = {RESERVED} AND due_at < ? RETURNING id, queue, worker, deliveries",
            (now,),
        ).fetchall()
        for message_id, queue, worker, deliveries in expired:
            logger.warning(
                "lease expired, message redelivered message_id=%s queue=%s worker=%s deliveries=%d",
                message_id,
                queue,
                worker,
                deliveries,
            )
        if expired:
            conn.executemany(
                "UPDATE jobs SET state = 'queued', version = version + 1 "
                "WHERE id = ? AND state = 'running'",
                [(row[0],) for row in expired],
            )

    def _reserve(
        self,
        conn: sqlite3.Connection,
        queues: Sequence[str],
        limit: int,
        lease: float,
        worker: str,
        now: float,
    ) -> list[Delivery]:
        rows: list[Any] = []
        # Rotate the starting queue so one busy queue cannot starve the others.
        start = random.randrange(len(queues))
        for queue in [*queues[start:], *queues[:start]]:
            if len(rows) >= limit:
                break
            rows += conn.execute(
                f"SELECT id, queue, fence, deliveries, enqueued_at, body, task, order_at, "
                f"idempotency_key FROM messages "
                f"WHERE queue = ? AND state = {READY} ORDER BY prio, order_at LIMIT ?",
                (queue, limit - len(rows)),
            ).fetchall()
        rows = self._drop_corrupt(conn, rows, now)
        if not rows:
            return []
        lease_until = now + lease
        conn.executemany(
            f"UPDATE messages SET state = {RESERVED}, due_at = ?, fence = fence + 1, "
            f"deliveries = deliveries + 1, worker = ? WHERE id = ?",
            [(lease_until, worker, row[0]) for row in rows],
        )
        cancel = self._start_jobs(conn, rows, now)
        return [
            Delivery(
                message_id=message_id,
                queue=queue,
                body=body,
                fence=fence + 1,
                lease_until=lease_until,
                delivery_count=deliveries + 1,
                enqueued_at=enqueued_at,
                cancel_requested=message_id in cancel,
            )
            for message_id, queue, fence, deliveries, enqueued_at, body, *_ in rows
        ]

    @staticmethod
    def _drop_corrupt(conn: sqlite3.Connection, rows: list[Any], now: float) -> list[Any]:
        """Dead-letter the rows whose counters or body are corrupt; return the others.

        A corrupt row (a fence that is not an integer, say, written by hand) would
        otherwise fail every reserve and stop the queue. Its job, if it is a task
        message, is recorded failed with the reason.
        """
        valid = []
        for row in rows:
            problem = _corrupt_field(row)
            if problem is None:
                valid.append(row)
                continue
            message_id, queue, task = row[0], row[1], row[6]
            reason = f"corrupt message: {problem}"
            logger.error(
                "message dead-lettered message_id=%s queue=%s reason=%s", message_id, queue, reason
            )
            conn.execute(
                f"UPDATE messages SET state = {DEAD}, due_at = NULL, worker = NULL, reason = ?, "
                "dead_at = ?, "
                "fence = CASE WHEN typeof(fence) = 'integer' AND fence > 0 THEN fence ELSE 1 END, "
                "deliveries = CASE WHEN typeof(deliveries) = 'integer' AND deliveries >= 0 "
                "  THEN deliveries ELSE 0 END, "
                "enqueued_at = CASE WHEN typeof(enqueued_at) IN ('integer', 'real') "
                "  THEN enqueued_at ELSE ? END "
                "WHERE id = ?",
                (reason, now, now, message_id),
            )
            if task is None:
                continue
            # NOTE: the backend does not know the app's retention, so this record has no expiry.
            conn.execute(
                "INSERT INTO jobs (id, task, queue, state, created_at, eta, finished_at, "
                "error_type, error_message, note) "
                "VALUES (?, ?, ?, 'failed', ?, ?, ?, 'sluicegate.errors.DecodeError', ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET state = 'failed', "
                "finished_at = excluded.finished_at, error_type = excluded.error_type, "
                "error_message = excluded.error_message, "
                "note = excluded.note, version = version + 1",
                (message_id, str(task), str(queue), now, now, now, reason, reason),
            )
        return valid

    @staticmethod
    def _start_jobs(conn: sqlite3.Connection, rows: list[Any], now: float) -> set[str]:
        """Mark the jobs of reserved messages running; return those with a cancel request.

        ``rows`` are the messages as read before the reserve. A first delivery of a
        task message inserts its job's row, as the record derived from the message
        would read after this change: running, attempt 1, version 2.
        """
        cancel: set[str] = set()
        first = []
        for job_id, queue, fence, _, enqueued_at, _, task, order_at, key in rows:
            if task is not None and fence == 0:
                first.append((job_id, task, queue, enqueued_at, order_at, now, key))
                continue
            row = conn.execute(
                "UPDATE jobs SET state = 'running', version = version + 1, "
                "attempts = attempts + 1, started_at = ? "
                "WHERE id = ? RETURNING cancel_requested",
                (now, job_id),
            ).fetchone()
            if row is not None and row[0]:
                cancel.add(job_id)
        if first:
            conn.executemany(
                "INSERT INTO jobs (id, task, queue, state, attempts, created_at, eta, "
                "started_at, idempotency_key, version) "
                "VALUES (?, ?, ?, 'running', 1, ?, ?, ?, ?, 2)",
                first,
            )
        return cancel

    def extend(self, deliveries: Sequence[Delivery], lease: float) -> list[bool]:
        """Extend leases to ``lease`` seconds from now; false where the lease was lost."""
        if not deliveries:
            return []
        held: list[bool] = []
        with self._write() as conn:
            now = self.clock()
            for delivery in deliveries:
                cursor = conn.execute(
                    f"UPDATE messages SET due_at = ? WHERE id = ? AND fence = ? "
                    f"AND state = {RESERVED} AND due_at >= ?",
                    (now + lease, delivery.message_id, delivery.fence, now),
                )
                ok = cursor.rowcount == 1
                if ok:
                    delivery.lease_until = now + lease
                held.append(ok)
        return held

    # -- job records

    def get_job(self, job_id: str) -> JobRecord | None:
        now = self.clock()
        rows = self._read(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ? AND {_UNEXPIRED} UNION ALL "
            f"SELECT {_DERIVED_JOB_COLUMNS} FROM messages WHERE id = ? AND {_NO_JOB_ROW}",
            (job_id, now, job_id),
        )
        return _job_from_row(rows[0], now) if rows else None

    def get_jobs(self, job_ids: Sequence[str]) -> list[JobRecord]:
        now = self.clock()
        records: list[JobRecord] = []
        for start in range(0, len(job_ids), 500):
            chunk = list(job_ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            rows = self._read(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id IN ({marks}) AND {_UNEXPIRED} "
                f"UNION ALL SELECT {_DERIVED_JOB_COLUMNS} FROM messages "
                f"WHERE id IN ({marks}) AND {_NO_JOB_ROW}",
                [*chunk, now, *chunk],
            )
            records += [_job_from_row(row, now) for row in rows]
        return records

    def request_cancel(self, job_id: str, retention: float) -> JobRecord | None:
        now = self.clock()
        with self._write() as conn:
            row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                # A job that no worker reserved yet gets its row now, as its derived
                # record reads, and the update below cancels it.
                row = conn.execute(
                    f"INSERT INTO jobs ({_JOB_COLUMNS}) SELECT {_DERIVED_JOB_COLUMNS} "
                    f"FROM messages WHERE id = ? AND {_NO_JOB_ROW} RETURNING state",
                    (job_id,),
                ).fetchone()
            if row is None:
                return None
            if row[0] in _PENDING_JOB_STATES:
                conn.execute(
                    f"DELETE FROM messages WHERE id = ? AND state IN ({READY}, {DELAYED})",
                    (job_id,),
                )
                conn.execute(
                    "UPDATE jobs SET state = 'cancelled', version = version + 1, "
                    "cancel_requested = 1, finished_at = ?, "
                    "expires_at = ?, note = 'cancelled before it ran' WHERE id = ?",
                    (now, now + retention, job_id),
                )
            elif row[0] == "running":
                conn.execute(
                    "UPDATE jobs SET cancel_requested = 1, version = version + 1 WHERE id = ?",
                    (job_id,),
                )
        if row[0] in _PENDING_JOB_STATES:
            self._result_notifier.notify()
        return self.get_job(job_id)

    def cancel_requests(self, job_ids: Sequence[str]) -> set[str]:
        if not job_ids:
            return set()
        marks = ",".join("?" * len(job_ids))
        rows = self._read(
            f"SELECT id FROM jobs WHERE id IN ({marks}) AND cancel_requested = 1", list(job_ids)
        )
        return {row[0] for row in rows}

    def set_progress(self, job_id: str, fence: int, fraction: float, message: str | None) -> bool:
        with self._write() as conn:
            held = conn.execute(
                f"SELECT 1 FROM messages WHERE id = ? AND fence = ? AND state = {RESERVED}",
                (job_id, fence),
            ).fetchone()
            if held is None:
                return False
            conn.execute(
                "UPDATE jobs SET progress = ?, progress_message = ?, version = version + 1 "
                "WHERE id = ?",
                (fraction, message, job_id),
            )
        return True

    def purge_expired(self, now: float | None = None) -> int:
        with self._write() as conn:
            now = self.clock() if now is None else now
            conn.execute(
                "DELETE FROM idempotency_keys WHERE job_id IN "
                "(SELECT id FROM jobs WHERE expires_at <= ?)",
                (now,),
            )
            deleted = conn.execute("DELETE FROM jobs WHERE expires_at <= ?", (now,)).rowcount
        if deleted:
            logger.info("expired job records purged count=%d path=%s", deleted, self.path)
        return int(deleted)

    # -- queues and dead letters

    def stats(self, queue: str | None = None) -> list[QueueStats]:
        now = self.clock()
        where, params = ("WHERE name = ?", (queue,)) if queue else ("", ())
        queue_rows = self._read(
            f"SELECT name, dead, max_length, max_wait, {_RATE_COLUMNS} FROM queues {where} "
            "ORDER BY name",
            params,
        )
        result = []
        for name, dead, max_length, max_wait, *rate_row in queue_rows:
            counts = dict(
                self._read(
                    "SELECT state, count(*) FROM messages WHERE queue = ? GROUP BY state", (name,)
                )
            )
            oldest = self._read(
                f"SELECT min(order_at) FROM messages WHERE queue = ? AND state = {READY}", (name,)
            )[0][0]
            due_count, oldest_due = self._read(_DUE_DELAYED, (now, name))[0]
            expired_count, oldest_expired = self._read(_EXPIRED_LEASES, (now, name))[0]
            oldest = _earliest(_earliest(oldest, oldest_due), oldest_expired)
            enqueued, completed, window = _recent_counts(rate_row, now)
            result.append(
                QueueStats(
                    name=name,
                    ready=counts.get(READY, 0) + due_count + expired_count,
                    delayed=counts.get(DELAYED, 0) - due_count,
                    running=counts.get(RESERVED, 0) - expired_count,
                    dead=dead,
                    oldest_ready_age=None if oldest is None else max(now - oldest, 0.0),
                    max_length=max_length if max_length is not None else 0,
                    max_wait=max_wait,
                    enqueue_rate=enqueued / window,
                    completion_rate=completed / window,
                )
            )
        return result

    def length(self, queue: str) -> int:
        """Return the number of live (not dead) messages in ``queue``."""
        rows = self._read("SELECT length, claims FROM queues WHERE name = ?", (queue,))
        if not rows:
            return 0
        if rows[0][1]:  # Blocks may hold unused slots in the length: count the messages.
            rows = self._read(
                f"SELECT count(*) FROM messages WHERE queue = ? AND state != {DEAD}", (queue,)
            )
        return int(rows[0][0])

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        rows = self._read(
            f"SELECT id, queue, body, reason, dead_at, deliveries FROM messages "
            f"WHERE queue = ? AND state = {DEAD} ORDER BY dead_at LIMIT ?",
            (queue, limit),
        )
        return [DeadLetter(r[0], r[1], r[2], r[3] or "", r[4] or 0.0, r[5]) for r in rows]

    def retry_dead(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        where, params = _dead_filter(queue, message_ids)
        with self._write() as conn:
            now = self.clock()
            ids = [row[0] for row in conn.execute(f"SELECT id FROM messages {where}", params)]
            conn.executemany(
                f"UPDATE messages SET state = {READY}, order_at = ?, deliveries = 0, "
                "reason = NULL, dead_at = NULL WHERE id = ?",
                [(now, message_id) for message_id in ids],
            )
            conn.executemany(
                "UPDATE jobs SET state = 'queued', version = version + 1, attempts = 0, "
                "finished_at = NULL, "
                "expires_at = NULL, note = 'retried from the dead-letter queue' WHERE id = ?",
                [(message_id,) for message_id in ids],
            )
        if ids:
            logger.info("dead letters retried queue=%s count=%d", queue, len(ids))
            self._notifier.notify()
        return len(ids)

    def purge_dead(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        where, params = _dead_filter(queue, message_ids)
        with self._write() as conn:
            deleted = conn.execute(f"DELETE FROM messages {where}", params).rowcount
        if deleted:
            logger.info("dead letters purged queue=%s count=%d", queue, deleted)
        return int(deleted)

    # -- waiting

    def listener(self) -> Listener:
        """Bind a socket woken when messages become ready; the caller closes it.

        The listener generation grows once the socket is bound, so that
        producers read the directory of sockets again (see _wakeup).
        """
        listener = Listener(self._wake_dir)
        try:
            with self._write() as conn:
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES (?, '1') ON CONFLICT (key) "
                    "DO UPDATE SET value = CAST(value AS INTEGER) + 1",
                    (_WAKE_GENERATION,),
                )
        except BaseException:
            listener.close()
            raise
        return listener

    def result_listener(self) -> Listener:
        """Bind a socket woken when jobs reach a final state; the caller closes it."""
        return Listener(self._wake_dir + "-results")

    def next_due(self) -> float | None:
        """Return the earliest ready time of a delayed message or lease expiry."""
        rows = self._read("SELECT min(due_at) FROM messages WHERE due_at IS NOT NULL")
        return None if rows[0][0] is None else float(rows[0][0])

    def wait_for_messages(self, queues: Sequence[str], timeout: float) -> None:
        """Block until a producer signals new messages or ``timeout`` seconds pass."""
        listener = self.listener()
        try:
            listener.wait(timeout)
        finally:
            listener.close()

    def ping(self) -> None:
        """Raise if the database cannot be read."""
        self._read("SELECT 1")

    # -- shared state: locks and compare-and-set values

    def acquire_lock(self, name: str, holder: str, ttl: float) -> bool:
        with self._write() as conn:
            now = self.clock()
            row = conn.execute(
                "SELECT holder, expires_at FROM locks WHERE name = ?", (name,)
            ).fetchone()
            if row is not None and row[0] != holder and row[1] > now:
                return False
            conn.execute(
                "INSERT INTO locks (name, holder, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
                "expires_at = excluded.expires_at",
                (name, holder, now + ttl),
            )
        return True

    def release_lock(self, name: str, holder: str) -> bool:
        with self._write() as conn:
            cursor = conn.execute("DELETE FROM locks WHERE name = ? AND holder = ?", (name, holder))
        return cursor.rowcount == 1

    def lock_holder(self, name: str) -> tuple[str, float] | None:
        rows = self._read(
            "SELECT holder, expires_at FROM locks WHERE name = ? AND expires_at > ?",
            (name, self.clock()),
        )
        return (str(rows[0][0]), float(rows[0][1])) if rows else None

    def get_value(self, key: str) -> bytes | None:
        rows = self._read("SELECT value FROM kv WHERE key = ?", (key,))
        return bytes(rows[0][0]) if rows else None

    def compare_and_set(self, key: str, expected: bytes | None, value: bytes | None) -> bool:
        with self._write() as conn:
            row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
            current = None if row is None else bytes(row[0])
            if current != expected:
                return False
            if value is None:
                conn.execute("DELETE FROM kv WHERE key = ?", (key,))
            else:
                conn.execute(
                    "INSERT INTO kv (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )
        return True

    def keys(self, prefix: str) -> list[str]:
        rows = self._read(
            "SELECT key FROM kv WHERE substr(key, 1, length(?)) = ? ORDER BY key", (prefix, prefix)
        )
        return [str(row[0]) for row in rows]


def _bucket(now: float) -> int:
    return int(now // BUCKET_SECONDS)


def _message_row(
    message: OutgoingMessage, now: float, task: str | None = None, key: str | None = None
) -> tuple[Any, ...]:
    """Return the values of a new message's row, in the order _insert_messages uses."""
    ready = message.ready_at <= now
    return (
        message.id,
        message.queue,
        READY if ready else DELAYED,
        -message.priority,
        message.ready_at,
        None if ready else message.ready_at,
        message.enqueued_at,
        task,
        key,
        message.body,
    )


def _earliest(first: float | None, second: float | None) -> float | None:
    times = [float(t) for t in (first, second) if t is not None]
    return min(times) if times else None


def _recent_counts(row: Sequence[Any], now: float) -> tuple[int, int, float]:
    """Return messages enqueued and completed over the recent window, and its seconds.

    The window is the previous rate bucket and the elapsed part of the
    current one: between one and two bucket widths.
    """
    bucket, enqueued_now, enqueued_before, completed_now, completed_before = row
    current = _bucket(now)
    window = BUCKET_SECONDS + (now - current * BUCKET_SECONDS)
    if bucket == current:
        return enqueued_now + enqueued_before, completed_now + completed_before, window
    if bucket == current - 1:
        return enqueued_now, completed_now, window
    return 0, 0, window


def _corrupt_field(row: Sequence[Any]) -> str | None:
    """Return what is corrupt in a message row as ``_reserve`` reads it, or None."""
    _, _, fence, deliveries, enqueued_at, body, *_ = row
    if type(fence) is not int or fence < 0:
        return f"fence is not a non-negative integer ({fence!r})"
    if type(deliveries) is not int or deliveries < 0:
        return f"deliveries is not a non-negative integer ({deliveries!r})"
    if type(enqueued_at) not in (int, float):
        return f"enqueued_at is not a number ({enqueued_at!r})"
    if not isinstance(body, bytes):
        return f"body is not a blob ({type(body).__name__})"
    return None


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


def _dead_filter(queue: str, message_ids: Sequence[str] | None) -> tuple[str, list[Any]]:
    where = f"WHERE queue = ? AND state = {DEAD}"
    params: list[Any] = [queue]
    if message_ids is not None:
        where += f" AND id IN ({','.join('?' * len(message_ids))})"
        params += list(message_ids)
    return where, params


def _job_from_row(row: Sequence[Any], now: float) -> JobRecord:
    state = JobState(row[3])
    if state is JobState.QUEUED and row[6] > now:
        state = JobState.SCHEDULED
    error = ErrorInfo(row[11], row[12] or "", row[13]) if row[11] else None
    return JobRecord(
        id=row[0],
        task=row[1],
        queue=row[2],
        state=state,
        attempts=row[4],
        created_at=row[5],
        eta=row[6],
        started_at=row[7],
        finished_at=row[8],
        expires_at=row[9],
        result=row[10],
        error=error,
        cancel_requested=bool(row[14]),
        progress=row[15],
        progress_message=row[16],
        idempotency_key=row[17],
        note=row[18],
        version=row[19],
    )
