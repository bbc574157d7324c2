"""Schema of the SQLite backend: one file holds the broker and the store.

``messages`` is the broker: one row per message, with its state, its place
in the queue and its lease. ``jobs`` is the store: one row per job that a
worker reserved or that was cancelled, kept until its retention ends. A task
message and its job share one id, so the backend settles a message and
records the job's outcome in one transaction.

An enqueue writes no ``jobs`` row, because every B-tree a durable commit
writes costs WAL pages and time. Until a worker first reserves the message,
or the job is cancelled, the job's record is derived from its message row.
The transaction that reserves or cancels inserts the ``jobs`` row.
``queues`` keeps each queue's length, so the bound check reads one row
instead of counting messages. The enqueue adds its batch to the length in
the same transaction as the insert; triggers subtract deletes and account
for moves to and from the dead-letter state, so the length cannot drift.

A producer that enqueues one job at a time claims a block of slots instead:
one transaction adds the whole block to the length, and the next enqueues
insert their message alone, as long as the queue's ``claim_gen`` is still the
one the block was claimed under. The length may then exceed the messages by
the slots not used yet, which only makes the bound stricter. ``claims``
counts the blocks claimed since the length was last exact. Before an enqueue
is rejected for the bound while ``claims`` is not 0, the length is recounted
from the messages and ``claim_gen`` grows, which voids every block.
"""

from __future__ import annotations

#: Version of the schema below; stored in ``meta`` under ``schema_version``.
#: Version 2 added ``messages.task`` and ``messages.idempotency_key`` and stopped
#: writing a jobs row at enqueue. Version 3 added ``queues.claim_gen`` and
#: ``queues.claims`` for blocks of slots. Older files are upgraded in place when opened.
SCHEMA_VERSION = 3

#: Message states, stored as small integers to keep the index narrow.
READY, RESERVED, DELAYED, DEAD = 0, 1, 2, 3

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- bucket, enqueued_*, completed_*: counts in the current and the previous
-- BUCKET_SECONDS-wide time bucket, for rates and the retry-after estimate.
-- They live in the queue's row, which every enqueue and settle writes anyway.
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY,
    length INTEGER NOT NULL DEFAULT 0,   -- ready + delayed + reserved messages + unused slots
    dead INTEGER NOT NULL DEFAULT 0,
    max_length INTEGER,                  -- the bound last declared, for display
    max_wait REAL,
    bucket INTEGER NOT NULL DEFAULT 0,
    enqueued_now INTEGER NOT NULL DEFAULT 0,
    enqueued_before INTEGER NOT NULL DEFAULT 0,
    completed_now INTEGER NOT NULL DEFAULT 0,
    completed_before INTEGER NOT NULL DEFAULT 0,
    claim_gen INTEGER NOT NULL DEFAULT 0,  -- blocks of slots claimed under another are void
    claims INTEGER NOT NULL DEFAULT 0      -- blocks claimed since the length was exact
) WITHOUT ROWID;

-- state: {READY} ready, {RESERVED} reserved, {DELAYED} delayed, {DEAD} dead.
-- prio is the negated priority, so ascending index order serves the highest first.
-- order_at is the time the message became ready: FIFO order within a priority.
-- due_at is the ready time of a delayed message and the lease expiry of a reserved one.
-- fence grows at each delivery; settling with an older fence is rejected.
-- Ids are time-ordered UUIDv7s, so they break ties of order_at in FIFO order.
-- task and idempotency_key are set on a task message and NULL on a plain one.
-- A task message with fence 0 was never delivered, and its job has no jobs row
-- yet: the record is derived from this row (see the jobs table).
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    state INTEGER NOT NULL,
    prio INTEGER NOT NULL,
    order_at REAL NOT NULL,
    due_at REAL,
    fence INTEGER NOT NULL DEFAULT 0,
    deliveries INTEGER NOT NULL DEFAULT 0,
    enqueued_at REAL NOT NULL,
    worker TEXT,
    reason TEXT,
    dead_at REAL,
    task TEXT,
    idempotency_key TEXT,
    body BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, state, prio, order_at);
CREATE INDEX IF NOT EXISTS messages_due ON messages (state, due_at) WHERE due_at IS NOT NULL;

-- Inserts are counted by the enqueue itself, one UPDATE per batch rather than
-- one per row: every insert goes through the admission step, which adds them.
DROP TRIGGER IF EXISTS messages_count_insert;
CREATE TRIGGER IF NOT EXISTS messages_count_delete AFTER DELETE ON messages BEGIN
    UPDATE queues SET length = length - (OLD.state != {DEAD}), dead = dead - (OLD.state = {DEAD})
    WHERE name = OLD.queue;
END;
CREATE TRIGGER IF NOT EXISTS messages_count_update AFTER UPDATE OF state ON messages
WHEN (OLD.state = {DEAD}) != (NEW.state = {DEAD}) BEGIN
    UPDATE queues SET length = length + (OLD.state = {DEAD}) - (NEW.state = {DEAD}),
                      dead = dead + (NEW.state = {DEAD}) - (OLD.state = {DEAD})
    WHERE name = NEW.queue;
END;

-- A job gets its row when a worker first reserves its message, or when it is
-- cancelled before that. Until then its record is read from its message:
-- state queued (scheduled while eta is ahead), attempts 0, created_at =
-- enqueued_at, eta = order_at, version 1. Only settling a delivery or retrying
-- a dead letter changes order_at, so before a delivery it is the enqueue's eta.
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    task TEXT NOT NULL,
    queue TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    eta REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    expires_at REAL,
    result BLOB,
    error_type TEXT,
    error_message TEXT,
    error_traceback TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    progress REAL,
    progress_message TEXT,
    idempotency_key TEXT,
    note TEXT,
    version INTEGER NOT NULL DEFAULT 1  -- grows by one at every change of the record
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS jobs_expiry ON jobs (expires_at) WHERE expires_at IS NOT NULL;

-- Idempotency keys, in a table of their own so that jobs without a key
-- cost no index entry. A key lives as long as its job's record.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key TEXT PRIMARY KEY,
    job_id TEXT NOT NULL
) WITHOUT ROWID;

-- Named locks with an expiry, e.g. the scheduler's leadership.
CREATE TABLE IF NOT EXISTS locks (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;

-- Small shared values changed by compare-and-set: breaker states, last fires.
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;
"""

#: Columns that version 2 added to ``messages``; opening a version 1 file adds them.
#: A version 1 file has a jobs row for every job, and NULL in ``task`` marks its
#: messages as having their row already, so no row needs rewriting.
MESSAGE_COLUMNS_ADDED_IN_2 = ("task", "idempotency_key")

#: Columns that version 3 added to ``queues``, with their definitions.
QUEUE_COLUMNS_ADDED_IN_3 = (
    ("claim_gen", "INTEGER NOT NULL DEFAULT 0"),
    ("claims", "INTEGER NOT NULL DEFAULT 0"),
)

#: Width in seconds of one rate bucket in ``queues``.
BUCKET_SECONDS = 30
