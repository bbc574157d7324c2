"""Schema of the PostgreSQL backend, as numbered migrations that ``sluicegate migrate`` applies.

All tables live in one schema (``sluicegate`` unless the URL names another),
and ``schema_migrations`` records the versions applied. The backend never
changes the schema itself: it reads the version at first use and raises
:class:`SchemaNotReady` unless it matches :data:`SCHEMA_VERSION`.

Tables:

- ``messages`` is the broker's hot table: ready, delayed and reserved
  messages only. An ack deletes the row, and a dead letter moves to
  ``dead_letters``, so the table contains no more than the queues' live length.
- ``jobs`` is the store: one row per job, kept until its retention ends.
  A task message and its job share one id.
- ``queues`` and ``queue_removals`` hold each queue's length as two
  counters, messages ever added and messages ever removed. Producers lock
  only the first row and workers only the second, so a producer holding a
  long transaction (a transactional enqueue) never blocks a worker's acks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from sluicegate.errors import ConfigurationError

logger = logging.getLogger(__name__)

#: Message states, stored as small integers to keep the indexes narrow.
READY, RESERVED, DELAYED = 0, 1, 2

#: Width in seconds of one rate bucket in ``queues`` and ``queue_removals``.
BUCKET_SECONDS = 30


class SchemaNotReady(ConfigurationError):
    """The database schema is missing or at another version than this sluicegate needs."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of the schema: its version, what it does, and its SQL."""

    version: int
    description: str
    statements: str


# Times are Unix seconds in double precision, computed by the client from
# the backend's clock, so every process and the test suite's fake clock agree.
# Ids are text in the "C" collation: UUIDv7s then sort in creation order.
# Counter rows get fillfactor 50 so their frequent updates stay HOT.
_INITIAL = """
CREATE TABLE {schema}.queues (
    name text COLLATE "C" PRIMARY KEY,
    max_length bigint,
    max_wait double precision,
    enqueued bigint NOT NULL DEFAULT 0,
    bucket bigint NOT NULL DEFAULT 0,
    enqueued_now bigint NOT NULL DEFAULT 0,
    enqueued_before bigint NOT NULL DEFAULT 0
) WITH (fillfactor = 50);

CREATE TABLE {schema}.queue_removals (
    name text COLLATE "C" PRIMARY KEY,
    removed bigint NOT NULL DEFAULT 0,
    bucket bigint NOT NULL DEFAULT 0,
    completed_now bigint NOT NULL DEFAULT 0,
    completed_before bigint NOT NULL DEFAULT 0
) WITH (fillfactor = 50);

-- prio is the negated priority, so ascending index order serves the highest first.
-- order_at is the time the message became ready: FIFO order within a priority.
-- due_at is the ready time of a delayed message and the lease expiry of a reserved one.
CREATE TABLE {schema}.messages (
    id text COLLATE "C" PRIMARY KEY,
    queue text COLLATE "C" NOT NULL,
    state smallint NOT NULL,
    prio integer NOT NULL,
    order_at double precision NOT NULL,
    due_at double precision,
    fence integer NOT NULL DEFAULT 0,
    deliveries integer NOT NULL DEFAULT 0,
    enqueued_at double precision NOT NULL,
    worker text,
    body bytea NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 1000);
CREATE INDEX messages_ready ON {schema}.messages (queue, prio, order_at, id) WHERE state = 0;
CREATE INDEX messages_due ON {schema}.messages (due_at) WHERE due_at IS NOT NULL;

CREATE TABLE {schema}.dead_letters (
    id text COLLATE "C" PRIMARY KEY,
    queue text COLLATE "C" NOT NULL,
    prio integer NOT NULL,
    fence integer NOT NULL,
    deliveries integer NOT NULL,
    enqueued_at double precision NOT NULL,
    reason text NOT NULL,
    dead_at double precision NOT NULL,
    body bytea NOT NULL
);
CREATE INDEX dead_letters_queue ON {schema}.dead_letters (queue, dead_at);

CREATE TABLE {schema}.jobs (
    id text COLLATE "C" PRIMARY KEY,
    task text NOT NULL,
    queue text NOT NULL,
    state text NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    created_at double precision NOT NULL,
    eta double precision NOT NULL,
    started_at double precision,
    finished_at double precision,
    expires_at double precision,
    result bytea,
    error_type text,
    error_message text,
    error_traceback text,
    cancel_requested boolean NOT NULL DEFAULT false,
    progress double precision,
    progress_message text,
    idempotency_key text,
    note text,
    version integer NOT NULL DEFAULT 1  -- grows by one at every change of the record
);
CREATE INDEX jobs_expiry ON {schema}.jobs (expires_at) WHERE expires_at IS NOT NULL;

-- A key lives as long as its job's record; jobs without a key cost no index entry.
CREATE TABLE {schema}.idempotency_keys (
    key text PRIMARY KEY,
    job_id text COLLATE "C" NOT NULL
);
CREATE INDEX idempotency_keys_job ON {schema}.idempotency_keys (job_id);

CREATE TABLE {schema}.locks (
    name text PRIMARY KEY,
    holder text NOT NULL,
    expires_at double precision NOT NULL
);

CREATE TABLE {schema}.kv (
    key text COLLATE "C" PRIMARY KEY,
    value bytea NOT NULL
);
"""

#: Every migration, in order; a migration's version is its position plus one.
MIGRATIONS: tuple[Migration, ...] = (Migration(1, "create the broker and store tables", _INITIAL),)

#: The schema version this sluicegate reads and writes.
SCHEMA_VERSION = MIGRATIONS[-1].version

_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
    version integer PRIMARY KEY,
    description text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


def current_version(conn: psycopg.Connection[Any], schema: str) -> int:
    """Return the schema version recorded in the database, 0 if none."""
    table = sql.Identifier(schema, "schema_migrations").as_string(conn)
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [table]).fetchone()
    if row is None or not row[0]:
        return 0
    query = sql.SQL("SELECT coalesce(max(version), 0) FROM {}.schema_migrations").format(
        sql.Identifier(schema)
    )
    version = conn.execute(query).fetchone()
    return int(version[0]) if version else 0


def check_version(version: int, schema: str, database: str) -> None:
    """Raise ``SchemaNotReady`` unless ``version`` is the one this sluicegate needs."""
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise SchemaNotReady(
            f"schema {schema!r} in database {database!r} is at version {version}, newer than "
            f"this sluicegate supports ({SCHEMA_VERSION}); upgrade sluicegate"
        )
    found = "missing" if version == 0 else f"at version {version}"
    raise SchemaNotReady(
        f"schema {schema!r} in database {database!r} is {found}, and this sluicegate needs "
        f"version {SCHEMA_VERSION}; run `sluicegate migrate APP_MODULE:APP` to create or "
        "upgrade it"
    )


def migrate(conn: psycopg.Connection[Any], schema: str) -> list[int]:
    """Apply the missing migrations in one transaction; return the versions applied.

    A transaction-scoped advisory lock serializes concurrent runs, so two
    deployments migrating at once apply each step once.
    """
    identifier = sql.Identifier(schema)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"sluicegate:{schema}"])
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(identifier))
        conn.execute(sql.SQL(_MIGRATIONS_TABLE).format(schema=identifier))
        version = current_version(conn, schema)
        if version > SCHEMA_VERSION:
            check_version(version, schema, conn.info.dbname)
        applied = []
        for migration in MIGRATIONS[version:]:
            conn.execute(sql.SQL(migration.statements).format(schema=identifier))
            conn.execute(
                sql.SQL(
                    "INSERT INTO {}.schema_migrations (version, description) VALUES (%s, %s)"
                ).format(identifier),
                [migration.version, migration.description],
            )
            logger.info(
                "migration applied schema=%s version=%d description=%s",
                schema,
                migration.version,
                migration.description,
            )
            applied.append(migration.version)
    return applied
