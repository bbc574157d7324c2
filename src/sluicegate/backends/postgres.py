"""Broker and store on PostgreSQL, through psycopg 3 and a connection pool.

URL: ``postgresql://user:password@host:5432/dbname?schema=sluicegate`` (or
``postgres://``). Every libpq parameter is accepted in the query string;
``schema`` (default ``sluicegate``) names the schema that contains the tables,
which ``sluicegate migrate`` creates. The backend never creates or alters
the schema itself (:mod:`sluicegate.backends.postgres_schema`).

Reserving: workers lease up to their free capacity in one statement per
queue, ``SELECT ... FOR UPDATE SKIP LOCKED`` on the ready index, so workers
never wait on each other's rows. Settling and reserving share one transaction.

Bounds: a queue's length is messages ever added minus messages ever removed,
kept in two counter rows. A producer locks its queue's first row for the rest
of its transaction, so concurrent producers of one queue are serialized and
cannot overshoot, while other queues and the workers' removals go on in parallel.

Wake-up: ``pg_notify`` inside each transaction that makes messages ready, so
a notification is sent if and only if the transaction commits; see
:mod:`sluicegate.backends._pg_notify`.

Durability: a producer's commit waits for the WAL flush (the server's
``synchronous_commit``), so ``enqueue`` returns only once the job is durable.
A worker's connections set ``synchronous_commit=off``: a server crash can
lose its last settlements of up to about 0.6 s (three times
``wal_writer_delay``), and those jobs then run again, which at-least-once
delivery allows. A clean server restart loses nothing.

Reconnecting: an operation that fails on a lost connection is retried with
backoff for up to ``reconnect_timeout`` seconds, then raises
``StoreUnavailable``. Retries cannot double a settled job, because settling
checks the fence, and an enqueue whose commit outcome was unknown is not
repeated if its jobs exist.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import pq
from psycopg.rows import TupleRow, tuple_row
from psycopg_pool import ConnectionPool

from sluicegate.backends import _pg_statements
from sluicegate.backends._exchange import ExchangeShortcuts
from sluicegate.backends._pg_notify import KEEPALIVES, NotificationHub
from sluicegate.backends._pipe_waiter import PipeWaiter
from sluicegate.backends.postgres_schema import (
    BUCKET_SECONDS,
    DELAYED,
    READY,
    RESERVED,
    SCHEMA_VERSION,
    check_version,
    current_version,
)
from sluicegate.backends.postgres_schema import migrate as apply_migrations
from sluicegate.backpressure import estimate_retry_after
from sluicegate.broker import Action, DeadLetter, EnqueueResult, QueueBounds, QueueStats, Settlement
from sluicegate.errors import ConfigurationError, QueueFull, StoreUnavailable
from sluicegate.message import Delivery, OutgoingMessage
from sluicegate.store import ErrorInfo, JobRecord, JobState, NewJob

logger = logging.getLogger(__name__)

# psycopg_pool logs every connection request at INFO; the sluicegate CLI logs
# INFO by default, which would add a line per transaction.
if logging.getLogger("psycopg.pool").level == logging.NOTSET:
    logging.getLogger("psycopg.pool").setLevel(logging.WARNING)

T = TypeVar("T")
Connection = psycopg.Connection[Any]
Cursor = psycopg.Cursor[TupleRow]

#: Schema used when the URL names none.
DEFAULT_SCHEMA = "sluicegate"

#: Seconds an operation keeps retrying a lost connection before ``StoreUnavailable``.
DEFAULT_RECONNECT_TIMEOUT = 60.0

#: First and longest pause, in seconds, between two attempts of a failed operation.
RETRY_DELAY = 0.05
MAX_RETRY_DELAY = 2.0

#: Seconds a caller waits for a free pooled connection before that attempt fails.
POOL_TIMEOUT = 10.0

#: Seconds to open a TCP connection to the server.
CONNECT_TIMEOUT = 5

#: Messages made ready per reserve, at most, from delays and expired leases.
PROMOTE_LIMIT = 1000

#: Expired job records deleted per transaction by ``purge_expired``.
PURGE_BATCH = 5000

#: Transactions ``purge_expired`` runs at most per call.
PURGE_MAX_BATCHES = 100


@dataclass(frozen=True, slots=True)
class PostgresURL:
    """A parsed backend URL: the libpq connection string and the sluicegate options."""

    conninfo: str
    schema: str
    redacted: str


def parse_url(url: str) -> PostgresURL:
    """Split the ``schema`` option off a ``postgresql://`` URL; validate the rest."""
    from sluicegate.backends import redact

    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigurationError(f"not a postgresql URL: {redact(url)!r}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for key, value in query if key == "schema"]
    schema = schemas[-1] if schemas else DEFAULT_SCHEMA
    if not schema or len(schema.encode()) > 63:
        raise ConfigurationError(
            f"schema must be 1 to 63 bytes long (PostgreSQL's identifier limit), got {schema!r}"
        )
    rest = urlencode([(key, value) for key, value in query if key != "schema"])
    conninfo = urlunsplit(parts._replace(query=rest))
    try:
        psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        raise ConfigurationError(f"invalid postgresql URL {redact(url)!r}: {exc}") from None
    return PostgresURL(conninfo, schema, redact(url))


def channel_name(schema: str, kind: str) -> str:
    """Return the notification channel of ``kind`` ("wake" or "results") for a schema."""
    name = f"sluicegate:{schema}:{kind}"
    if len(name.encode()) <= 63:
        return name
    import hashlib

    return f"sluicegate:{hashlib.sha256(schema.encode()).hexdigest()[:24]}:{kind}"


class PostgresBackend(ExchangeShortcuts):
    """Broker and store in one PostgreSQL schema.

    Parameters:
      url: ``postgresql://user:password@host:port/dbname?schema=name``.
      durable: commit with the server's ``synchronous_commit`` (producers),
        or with it off (workers, whose lost settlements only cause re-runs).
      clock: returns the current Unix time; tests pass a controllable one.
      pool_size: the maximum number of connections this backend opens at once.
      reconnect_timeout: seconds an operation retries a lost connection.
    """

    def __init__(
        self,
        url: str,
        *,
        durable: bool = True,
        clock: Callable[[], float] = time.time,
        pool_size: int = 10,
        reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT,
    ) -> None:
        parsed = parse_url(url)
        self.url = parsed.redacted
        self.schema = parsed.schema
        self.durable = durable
        self.clock = clock
        self.pool_size = max(1, pool_size)
        self.reconnect_timeout = reconnect_timeout
        self._conninfo = parsed.conninfo
        self._sql = _pg_statements.compile_statements(self.schema)
        self._wake_channel = channel_name(self.schema, "wake")
        self._result_channel = channel_name(self.schema, "results")
        self._pool: ConnectionPool[Connection] | None = None
        self._hub: NotificationHub | None = None
        self._lock = threading.Lock()
        self._schema_checked = False

    def __repr__(self) -> str:
        return f"PostgresBackend({self.url!r}, schema={self.schema!r})"

    # -- connections, transactions and retries

    def _connection_options(self) -> dict[str, Any]:
        return {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT, **KEEPALIVES}

    def _configure(self, conn: Connection) -> None:
        if not self.durable:
            conn.execute("SET synchronous_commit = off")

    def _get_pool(self) -> ConnectionPool[Connection]:
        with self._lock:
            if self._pool is None:
                pool: ConnectionPool[Connection] = ConnectionPool(
                    self._conninfo,
                    kwargs=self._connection_options(),
                    min_size=1,
                    max_size=self.pool_size,
                    open=False,
                    configure=self._configure,
                    timeout=POOL_TIMEOUT,
                    name=f"sluicegate-{self.schema}",
                    num_workers=2,
                )
                pool.open(wait=False)
                self._pool = pool
            return self._pool

    def _run(
        self,
        operation: Callable[[Cursor], T],
        what: str,
        *,
        transaction: bool = True,
        pipeline: bool = False,
    ) -> T:
        """Run ``operation`` on a pooled connection, retrying lost connections with backoff.

        With ``transaction`` the operation runs in one transaction; without,
        each statement commits on its own (single-statement reads and writes).
        With ``pipeline`` the transaction runs in libpq's pipeline mode: a
        statement whose result the operation does not fetch (and BEGIN) is
        sent without waiting for the server, so it shares a round trip with
        the next fetch, and COMMIT takes one more.
        """
        pool = self._get_pool()
        started = time.monotonic()
        delay = RETRY_DELAY
        attempt = 0
        while True:
            attempt += 1
            try:
                with pool.connection() as conn:
                    if not self._schema_checked:
                        self._check_schema(conn)
                    cursor = conn.cursor(row_factory=tuple_row)
                    if not transaction:
                        result = operation(cursor)
                    elif pipeline:
                        result = _in_pipeline(conn, cursor, operation)
                    else:
                        with conn.transaction():
                            result = operation(cursor)
            except psycopg.OperationalError as exc:
                waited = time.monotonic() - started
                if waited + delay > self.reconnect_timeout:
                    raise StoreUnavailable(
                        f"PostgreSQL at {self.url} did not respond to {what} for {waited:.1f}s: "
                        f"{_first_line(exc)}"
                    ) from exc
                logger.warning(
                    "postgresql operation failed, retrying operation=%s attempt=%d delay_s=%.2f "
                    "url=%s error=%s",
                    what,
                    attempt,
                    delay,
                    self.url,
                    _first_line(exc),
                )
                time.sleep(random.uniform(delay / 2, delay))
                delay = min(delay * 2, MAX_RETRY_DELAY)
                continue
            if attempt > 1:
                logger.warning(
                    "postgresql connection restored operation=%s attempts=%d outage_s=%.2f url=%s",
                    what,
                    attempt,
                    time.monotonic() - started,
                    self.url,
                )
            return result

    def _check_schema(self, conn: Connection) -> None:
        check_version(current_version(conn, self.schema), self.schema, conn.info.dbname)
        self._schema_checked = True

    def _query(self, name: str, params: Any = None) -> list[TupleRow]:
        """Run one read statement in autocommit mode and return its rows."""
        return self._run(
            lambda cur: cur.execute(self._sql[name], params).fetchall(), name, transaction=False
        )

    def migrate(self) -> list[int]:
        """Create or upgrade the schema; return the versions applied (empty if current)."""
        with self._direct_connection() as conn:
            applied = apply_migrations(conn, self.schema)
        self._schema_checked = False
        return applied

    def schema_version(self) -> tuple[int, int]:
        """Return the schema version in the database and the one this sluicegate needs."""
        with self._direct_connection() as conn:
            return current_version(conn, self.schema), SCHEMA_VERSION

    def _direct_connection(self) -> Connection:
        """Open one connection outside the pool, for schema work; no retries."""
        try:
            return psycopg.connect(self._conninfo, **self._connection_options())
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(
                f"cannot connect to PostgreSQL at {self.url}: {_first_line(exc)}"
            ) from None

    def close(self) -> None:
        """Close the pool and the LISTEN connection."""
        with self._lock:
            pool, self._pool = self._pool, None
            hub, self._hub = self._hub, None
        if hub is not None:
            hub.close()
        if pool is not None:
            pool.close()

    def ping(self) -> None:
        """Raise if the server cannot be reached or the schema is not current."""
        self._run(lambda cur: cur.execute("SELECT 1"), "ping", transaction=False)

    # -- enqueue

    def enqueue_jobs(self, jobs: Sequence[NewJob], bounds: QueueBounds) -> list[EnqueueResult]:
        """Create jobs and their messages in one transaction, all or none.

        A job whose idempotency key exists already is not created; its result
        names the existing job. Raises ``QueueFull`` if the new messages do
        not fit under ``bounds``.
        """
        if not jobs:
            return []
        if _fits_one_statement(len(jobs), bounds) and not any(j.idempotency_key for j in jobs):
            self._enqueue_at_once([job.message for job in jobs], jobs, bounds)
            return [EnqueueResult(job.message.id, created=True) for job in jobs]
        ids = [job.message.id for job in jobs]
        last: list[EnqueueResult] = []

        def enqueue(cur: Cursor) -> list[EnqueueResult]:
            if last and cur.execute(self._sql["EXISTING_JOBS"], [ids]).fetchone():
                # An earlier attempt committed before its connection dropped.
                return last
            last[:] = self._enqueue(cur, jobs, bounds, self.clock())
            return list(last)

        return self._run(enqueue, "enqueue")

    def enqueue_jobs_in(
        self, connection: Connection, jobs: Sequence[NewJob], bounds: QueueBounds
    ) -> list[EnqueueResult]:
        """Create jobs inside the caller's transaction on ``connection``.

        The jobs exist if and only if the caller's transaction commits, and
        the workers' wake-up is sent at that commit. The queue's counter row
        stays locked until then, so other producers of the same queue wait
        for this transaction; keep it short. ``QueueFull`` rolls back only
        this enqueue (a savepoint), and the caller's transaction goes on.
        """
        if not isinstance(connection, psycopg.Connection):
            raise ConfigurationError(
                f"connection must be a psycopg 3 Connection, got {type(connection).__name__}"
            )
        if not jobs:
            return []
        if not self._schema_checked:
            self._check_schema(connection)
        with connection.transaction():
            cursor = connection.cursor(row_factory=tuple_row)
            return self._enqueue(cursor, jobs, bounds, self.clock())

    def publish(self, messages: Sequence[OutgoingMessage], bounds: QueueBounds) -> None:
        """Add plain messages (no job records) to one queue, all or none."""
        if not messages:
            return
        if _fits_one_statement(len(messages), bounds):
            self._enqueue_at_once(messages, (), bounds)
            return
        ids = [m.id for m in messages]
        attempted = False

        def publish(cur: Cursor) -> None:
            nonlocal attempted
            if attempted and cur.execute(self._sql["EXISTING_MESSAGES"], [ids]).fetchone():
                return  # An earlier attempt committed before its connection dropped.
            attempted = True
            now = self.clock()
            self._admit(cur, messages[0].queue, len(messages), bounds, now)
            self._insert_messages(cur, messages, now)

        self._run(publish, "publish")

    def _enqueue_at_once(
        self, messages: Sequence[OutgoingMessage], jobs: Sequence[NewJob], bounds: QueueBounds
    ) -> None:
        """Admit and insert ``messages`` (and the records of ``jobs``) in one statement.

        Only for a batch that ``_fits_one_statement`` and has no idempotency
        keys. Raises ``QueueFull`` if the batch does not fit under ``bounds``.
        """
        queue = messages[0].queue
        ids = [m.id for m in messages]
        existing = "EXISTING_JOBS" if jobs else "EXISTING_MESSAGES"
        attempted = False

        def enqueue(cur: Cursor) -> tuple[float, TupleRow | None]:
            nonlocal attempted
            if attempted and cur.execute(self._sql[existing], [ids]).fetchone():
                return 0.0, None  # An earlier attempt committed before its connection dropped.
            attempted = True
            now = self.clock()
            params = {
                "queue": queue,
                "max_length": bounds.max_length,
                "declared": bounds.declared,
                "count": len(messages),
                "bucket": _bucket(now),
                "now": now,
                "ids": ids,
                "prios": [-m.priority for m in messages],
                "ready_at": [m.ready_at for m in messages],
                "enqueued_at": [m.enqueued_at for m in messages],
                "bodies": [m.body for m in messages],
                "job_ids": [j.message.id for j in jobs],
                "tasks": [j.task for j in jobs],
                "created_at": [j.message.enqueued_at for j in jobs],
                "etas": [j.message.ready_at for j in jobs],
                "wake": any(m.ready_at <= now for m in messages),
                "channel": self._wake_channel,
            }
            return now, cur.execute(self._sql["ENQUEUE_AT_ONCE"], params).fetchone()

        now, row = self._run(enqueue, "enqueue", transaction=False)
        if row is None or row[0]:
            return
        enqueued, removed, *rates = row[2:]
        excess = int(enqueued or 0) + len(messages) - int(removed or 0) - bounds.max_length
        completed = _completed_recently(rates, now)
        retry_after = estimate_retry_after(excess, completed, _window(now))
        raise QueueFull(queue, "max_length", bounds.max_length, retry_after)

    def _enqueue(
        self, cur: Cursor, jobs: Sequence[NewJob], bounds: QueueBounds, now: float
    ) -> list[EnqueueResult]:
        results, fresh = self._match_idempotency_keys(cur, jobs, now)
        if not fresh:
            return results
        queue = fresh[0].message.queue
        self._admit(cur, queue, len(fresh), bounds, now)
        self._insert_messages(cur, [job.message for job in fresh], now)
        cur.execute(
            self._sql["INSERT_JOBS"],
            [
                [j.message.id for j in fresh],
                [j.task for j in fresh],
                [queue] * len(fresh),
                [j.message.enqueued_at for j in fresh],
                [j.message.ready_at for j in fresh],
                [j.idempotency_key for j in fresh],
            ],
        )
        keyed = [(j.idempotency_key, j.message.id) for j in fresh if j.idempotency_key]
        if keyed:
            cur.execute(
                self._sql["UPSERT_KEYS"], [[key for key, _ in keyed], [i for _, i in keyed]]
            )
        return results

    def _match_idempotency_keys(
        self, cur: Cursor, jobs: Sequence[NewJob], now: float
    ) -> tuple[list[EnqueueResult], list[NewJob]]:
        keys = sorted({job.idempotency_key for job in jobs if job.idempotency_key is not None})
        existing: dict[str, str] = {}
        if keys:
            # Same-key producers wait for each other here, so only one of them creates the job.
            cur.execute(
                self._sql["LOCK_KEYS"], {"namespace": f"sluicegate:{self.schema}", "keys": keys}
            )
            rows = cur.execute(self._sql["MATCH_KEYS"], {"keys": keys, "now": now}).fetchall()
            existing = {str(key): str(job_id) for key, job_id in rows}
        results: list[EnqueueResult] = []
        fresh: list[NewJob] = []
        for job in jobs:
            key = job.idempotency_key
            if key is not None and key in existing:
                results.append(EnqueueResult(existing[key], created=False))
                continue
            if key is not None:
                existing[key] = job.message.id
            results.append(EnqueueResult(job.message.id, created=True))
            fresh.append(job)
        return results, fresh

    def _admit(self, cur: Cursor, queue: str, count: int, bounds: QueueBounds, now: float) -> None:
        params = {
            "queue": queue,
            "max_length": bounds.max_length,
            "max_wait": bounds.max_wait,
            "declared": bounds.declared,
            "count": count,
            "bucket": _bucket(now),
        }
        row = cur.execute(self._sql["ADMIT"], params).fetchone()
        assert row is not None
        enqueued, removed, *rates = row
        length = int(enqueued) - int(removed or 0)
        completed = _completed_recently(rates, now)
        if length > bounds.max_length:
            retry_after = estimate_retry_after(length - bounds.max_length, completed, _window(now))
            raise QueueFull(queue, "max_length", bounds.max_length, retry_after)
        if bounds.max_wait is not None:
            oldest_row = cur.execute(self._sql["OLDEST_READY"], {"queue": queue, "now": now})
            oldest = oldest_row.fetchone()
            if oldest is not None and oldest[0] is not None and now - oldest[0] > bounds.max_wait:
                retry_after = estimate_retry_after(length - count, completed, _window(now))
                raise QueueFull(queue, "max_wait", bounds.max_wait, retry_after)

    def _insert_messages(
        self, cur: Cursor, messages: Sequence[OutgoingMessage], now: float
    ) -> None:
        ready = [m.ready_at <= now for m in messages]
        cur.execute(
            self._sql["INSERT_MESSAGES"],
            [
                [m.id for m in messages],
                [m.queue for m in messages],
                [READY if r else DELAYED for r in ready],
                [-m.priority for m in messages],
                [m.ready_at for m in messages],
                [None if r else m.ready_at for m, r in zip(messages, ready, strict=True)],
                [m.enqueued_at for m in messages],
                [m.body for m in messages],
            ],
        )
        if any(ready):
            cur.execute(self._sql["NOTIFY"], [self._wake_channel])

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

        def exchange(cur: Cursor) -> tuple[list[bool], list[Delivery]]:
            now = self.clock()
            settled = self._settle_all(cur, settlements, now) if settlements else []
            deliveries: list[Delivery] = []
            if limit > 0 and queues:
                promoted = self._promote_due(cur, now)
                deliveries = self._reserve(cur, queues, limit, lease, worker, now)
                self._log_expired(promoted)
            return settled, deliveries

        return self._run(exchange, "exchange", pipeline=True)

    def _settle_all(self, cur: Cursor, settlements: Sequence[Settlement], now: float) -> list[bool]:
        done: set[tuple[str, int]] = set()
        removed: dict[str, int] = {}
        groups: dict[str, list[Settlement]] = {}
        for settlement in settlements:
            groups.setdefault(_statement_for(settlement), []).append(settlement)
        for name, group in groups.items():
            params: dict[str, Any] = {
                "now": now,
                "ids": [s.delivery.message_id for s in group],
                "fences": [s.delivery.fence for s in group],
                "ready_at": [now + s.delay for s in group],
                "release": [s.action is Action.RELEASE for s in group],
                "uncount": [s.action in (Action.RELEASE, Action.DEFER) for s in group],
                "reasons": [s.reason or "dead-lettered" for s in group],
            }
            for message_id, fence, queue in cur.execute(self._sql[name], params).fetchall():
                done.add((message_id, fence))
                if name in ("ACK", "DEAD_LETTER"):
                    removed[queue] = removed.get(queue, 0) + 1
        settled = [(s.delivery.message_id, s.delivery.fence) in done for s in settlements]
        applied = [s for s, ok in zip(settlements, settled, strict=True) if ok]
        self._update_jobs(cur, [s for s in applied if s.job is not None], now)
        for queue in sorted(removed):  # One order for every transaction, so none deadlock.
            params = {"queue": queue, "removed": removed[queue], "completed": removed[queue]}
            cur.execute(self._sql["COUNT_REMOVED"], {**params, "bucket": _bucket(now)})
        if any(s.action in (Action.RETRY, Action.RELEASE, Action.DEFER) for s in applied):
            cur.execute(self._sql["NOTIFY"], [self._wake_channel])
        if any(s.job is not None and s.job.state.is_final for s in applied):
            cur.execute(self._sql["NOTIFY"], [self._result_channel])
        return settled

    def _update_jobs(self, cur: Cursor, settlements: Sequence[Settlement], now: float) -> None:
        if not settlements:
            return
        columns: list[list[Any]] = [[] for _ in range(11)]
        for settlement in settlements:
            update = settlement.job
            assert update is not None
            error = update.error or ErrorInfo("", "")
            final = update.state.is_final
            # A retried or deferred job's eta is when it is due again.
            retry = settlement.action in (Action.RETRY, Action.DEFER)
            row = (
                settlement.delivery.message_id,
                update.state.value,
                update.result,
                error.type,
                error.message,
                error.traceback,
                update.note,
                now if final else None,
                now + update.retention if final else None,
                0 if update.count_attempt else 1,
                now + settlement.delay if retry else None,
            )
            for column, value in zip(columns, row, strict=True):
                column.append(value)
        cur.execute(self._sql["UPDATE_JOBS"], columns)

    def _promote_due(self, cur: Cursor, now: float) -> Cursor:
        """Send PROMOTE_DUE on a cursor of its own, whose rows are read after RESERVE's.

        In pipeline mode a result stays in the cursor that ran its statement, so
        RESERVE on ``cur`` goes out without waiting for this one.
        """
        promoted = cur.connection.cursor(row_factory=tuple_row)
        promoted.execute(self._sql["PROMOTE_DUE"], {"now": now, "limit": PROMOTE_LIMIT})
        return promoted

    def _log_expired(self, promoted: Cursor) -> None:
        for message_id, queue, was, worker, deliveries in promoted.fetchall():
            if was == RESERVED:
                logger.warning(
                    "lease expired, message redelivered message_id=%s queue=%s worker=%s "
                    "deliveries=%d",
                    message_id,
                    queue,
                    worker,
                    deliveries,
                )

    def _reserve(
        self,
        cur: Cursor,
        queues: Sequence[str],
        limit: int,
        lease: float,
        worker: str,
        now: float,
    ) -> list[Delivery]:
        rows: list[TupleRow] = []
        # Rotate the starting queue so one busy queue cannot starve the others.
        start = random.randrange(len(queues))
        for queue in [*queues[start:], *queues[:start]]:
            if len(rows) >= limit:
                break
            params = {
                "queue": queue,
                "limit": limit - len(rows),
                "lease_until": now + lease,
                "worker": worker,
                "now": now,
            }
            picked = cur.execute(self._sql["RESERVE"], params).fetchall()
            # RETURNING has no order; restore priority then FIFO order within each queue.
            rows += sorted(picked, key=lambda row: (row[6], row[7], row[0]))
        return [
            Delivery(
                message_id=message_id,
                queue=queue,
                body=bytes(body),
                fence=fence,
                lease_until=now + lease,
                delivery_count=deliveries,
                enqueued_at=enqueued_at,
                cancel_requested=bool(cancel),
            )
            for message_id, queue, fence, deliveries, enqueued_at, body, _, _, cancel in rows
        ]

    def extend(self, deliveries: Sequence[Delivery], lease: float) -> list[bool]:
        """Extend leases to ``lease`` seconds from now; false where the lease was lost."""
        if not deliveries:
            return []

        def extend(cur: Cursor) -> tuple[float, set[tuple[str, int]]]:
            now = self.clock()
            params = {
                "now": now,
                "lease_until": now + lease,
                "ids": [d.message_id for d in deliveries],
                "fences": [d.fence for d in deliveries],
            }
            rows = cur.execute(self._sql["EXTEND"], params).fetchall()
            return now + lease, {(str(row[0]), int(row[1])) for row in rows}

        until, held = self._run(extend, "extend", transaction=False)
        result = []
        for delivery in deliveries:
            ok = (delivery.message_id, delivery.fence) in held
            if ok:
                delivery.lease_until = until
            result.append(ok)
        return result

    # -- job records

    def get_job(self, job_id: str) -> JobRecord | None:
        now = self.clock()
        rows = self._query("GET_JOB", {"id": job_id, "now": now})
        return _job_from_row(rows[0], now) if rows else None

    def get_jobs(self, job_ids: Sequence[str]) -> list[JobRecord]:
        if not job_ids:
            return []
        now = self.clock()
        rows = self._query("GET_JOBS", {"ids": list(job_ids), "now": now})
        return [_job_from_row(row, now) for row in rows]

    def request_cancel(self, job_id: str, retention: float) -> JobRecord | None:
        def cancel(cur: Cursor) -> bool:
            now = self.clock()
            if cur.execute(self._sql["JOB_STATE"], [job_id]).fetchone() is None:
                return False
            removed = cur.execute(self._sql["CANCEL_MESSAGE"], [job_id]).fetchone()
            if removed is None:
                cur.execute(self._sql["REQUEST_CANCEL_RUNNING"], [job_id])
                return True
            params = {"id": job_id, "now": now, "expires_at": now + retention}
            cur.execute(self._sql["CANCEL_PENDING_JOB"], params)
            counts = {"queue": removed[0], "removed": 1, "completed": 0, "bucket": _bucket(now)}
            cur.execute(self._sql["COUNT_REMOVED"], counts)
            cur.execute(self._sql["NOTIFY"], [self._result_channel])
            return True

        if not self._run(cancel, "request_cancel"):
            return None
        return self.get_job(job_id)

    def cancel_requests(self, job_ids: Sequence[str]) -> set[str]:
        if not job_ids:
            return set()
        return {str(row[0]) for row in self._query("CANCEL_REQUESTS", [list(job_ids)])}

    def set_progress(self, job_id: str, fence: int, fraction: float, message: str | None) -> bool:
        params = {"id": job_id, "fence": fence, "fraction": fraction, "message": message}

        def report(cur: Cursor) -> bool:
            return cur.execute(self._sql["SET_PROGRESS"], params).rowcount == 1

        return self._run(report, "set_progress", transaction=False)

    def purge_expired(self, now: float | None = None) -> int:
        now = self.clock() if now is None else now
        params = {"now": now, "limit": PURGE_BATCH}
        deleted = 0
        for _ in range(PURGE_MAX_BATCHES):
            (count,) = self._query("PURGE_EXPIRED", params)[0]
            deleted += int(count)
            if count < PURGE_BATCH:
                break
        if deleted:
            logger.info("expired job records purged count=%d schema=%s", deleted, self.schema)
        return deleted

    # -- queues and dead letters

    def stats(self, queue: str | None = None) -> list[QueueStats]:
        now = self.clock()
        result = []
        for row in self._query("QUEUE_ROWS", {"queue": queue}):
            name, max_length, max_wait, bucket, enqueued_now, enqueued_before, *completion = row
            ready, delayed, running, oldest = self._query(
                "QUEUE_COUNTS", {"queue": name, "now": now}
            )[0]
            (dead,) = self._query("DEAD_COUNT", [name])[0]
            enqueued = _recent(bucket, enqueued_now, enqueued_before, now)
            completed = _completed_recently(completion, now)
            window = _window(now)
            result.append(
                QueueStats(
                    name=name,
                    ready=int(ready),
                    delayed=int(delayed),
                    running=int(running),
                    dead=int(dead),
                    oldest_ready_age=None if oldest is None else max(now - oldest, 0.0),
                    max_length=int(max_length or 0),
                    max_wait=max_wait,
                    enqueue_rate=enqueued / window,
                    completion_rate=completed / window,
                )
            )
        return result

    def length(self, queue: str) -> int:
        """Return the number of live (not dead) messages in ``queue``."""
        rows = self._query("LENGTH", [queue])
        return int(rows[0][0]) if rows else 0

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        rows = self._query("DEAD_LETTERS", [queue, limit])
        return [DeadLetter(r[0], r[1], bytes(r[2]), r[3], r[4], r[5]) for r in rows]

    def retry_dead(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        ids = None if message_ids is None else list(message_ids)

        def revive(cur: Cursor) -> int:
            params = {"queue": queue, "ids": ids, "now": self.clock()}
            (count,) = cur.execute(self._sql["RETRY_DEAD"], params).fetchall()[0]
            if count:
                cur.execute(self._sql["COUNT_REVIVED"], [count, queue])
                cur.execute(self._sql["NOTIFY"], [self._wake_channel])
            return int(count)

        count = self._run(revive, "retry_dead")
        if count:
            logger.info("dead letters retried queue=%s count=%d", queue, count)
        return count

    def purge_dead(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        params = {"queue": queue, "ids": None if message_ids is None else list(message_ids)}

        def purge(cur: Cursor) -> int:
            return cur.execute(self._sql["PURGE_DEAD"], params).rowcount

        deleted = self._run(purge, "purge_dead", transaction=False)
        if deleted:
            logger.info("dead letters purged queue=%s count=%d", queue, deleted)
        return deleted

    # -- waiting

    def _notification_hub(self) -> NotificationHub:
        with self._lock:
            if self._hub is None:
                channels = (self._wake_channel, self._result_channel)
                self._hub = NotificationHub(self._listen_connection, channels, self.url)
            return self._hub

    def _listen_connection(self) -> Connection:
        return psycopg.connect(self._conninfo, **self._connection_options())

    def listener(self) -> PipeWaiter:
        """Subscribe to "messages may be ready" signals; the caller closes the waiter."""
        return self._notification_hub().subscribe(self._wake_channel)

    def result_listener(self) -> PipeWaiter:
        """Subscribe to "a job reached a final state" signals; the caller closes the waiter."""
        return self._notification_hub().subscribe(self._result_channel)

    def next_due(self) -> float | None:
        """Return the earliest ready time of a delayed message or lease expiry."""
        due = self._query("NEXT_DUE")[0][0]
        return None if due is None else float(due)

    def wait_for_messages(self, queues: Sequence[str], timeout: float) -> None:
        """Block until a producer signals new messages or ``timeout`` seconds pass."""
        listener = self.listener()
        try:
            listener.wait(timeout)
        finally:
            listener.close()

    # -- shared state: locks and compare-and-set values

    def acquire_lock(self, name: str, holder: str, ttl: float) -> bool:
        def acquire(cur: Cursor) -> bool:
            # Read at each attempt: a lock taken after an outage must not expire early.
            now = self.clock()
            params = {"name": name, "holder": holder, "until": now + ttl, "now": now}
            return bool(cur.execute(self._sql["ACQUIRE_LOCK"], params).fetchall())

        return self._run(acquire, "acquire_lock", transaction=False)

    def release_lock(self, name: str, holder: str) -> bool:
        def release(cur: Cursor) -> bool:
            return cur.execute(self._sql["RELEASE_LOCK"], [name, holder]).rowcount == 1

        return self._run(release, "release_lock", transaction=False)

    def lock_holder(self, name: str) -> tuple[str, float] | None:
        rows = self._query("LOCK_HOLDER", [name, self.clock()])
        return (str(rows[0][0]), float(rows[0][1])) if rows else None

    def get_value(self, key: str) -> bytes | None:
        rows = self._query("GET_VALUE", [key])
        return bytes(rows[0][0]) if rows else None

    def compare_and_set(self, key: str, expected: bytes | None, value: bytes | None) -> bool:
        def swap(cur: Cursor) -> bool:
            if expected is None and value is None:
                return cur.execute(self._sql["GET_VALUE"], [key]).fetchone() is None
            if expected is None:
                return cur.execute(self._sql["INSERT_VALUE"], [key, value]).rowcount == 1
            if value is None:
                return cur.execute(self._sql["DELETE_VALUE"], [key, expected]).rowcount == 1
            return cur.execute(self._sql["REPLACE_VALUE"], [value, key, expected]).rowcount == 1

        return self._run(swap, "compare_and_set", transaction=False)

    def keys(self, prefix: str) -> list[str]:
        return [str(row[0]) for row in self._query("KEYS", [prefix])]


def _in_pipeline(conn: Connection, cursor: Cursor, operation: Callable[[Cursor], T]) -> T:
    """Run ``operation`` in one transaction in pipeline mode, rolling back if it fails.

    BEGIN and COMMIT are plain statements here, so BEGIN travels with the
    first fetch and COMMIT with the pipeline's closing sync. psycopg 3.3's
    ``transaction()`` inside a pipeline waits for the server at BEGIN, before
    COMMIT, at COMMIT and at the sync: four round trips instead of one
    (counted with libpq's protocol trace).
    """
    try:
        with conn.pipeline():
            cursor.execute(b"BEGIN")
            result = operation(cursor)
            cursor.execute(b"COMMIT")
    except BaseException:
        if conn.info.transaction_status != pq.TransactionStatus.IDLE:
            with contextlib.suppress(psycopg.Error):
                conn.execute(b"ROLLBACK")
        raise
    return result


def _fits_one_statement(count: int, bounds: QueueBounds) -> bool:
    """Tell whether a batch of ``count`` can be enqueued by ``ENQUEUE_AT_ONCE``.

    That statement checks only ``max_length``, and it inserts a new queue's
    counter row without a check, so a longer batch takes the transaction.
    """
    return bounds.max_wait is None and count <= bounds.max_length


def _statement_for(settlement: Settlement) -> str:
    action = settlement.action
    if action is Action.ACK:
        return "ACK"
    if action is Action.DEAD:
        return "DEAD_LETTER"
    if action in (Action.RETRY, Action.DEFER) and settlement.delay > 0:
        return "RETRY_LATER"
    return "RETRY_NOW"


def _bucket(now: float) -> int:
    return int(now // BUCKET_SECONDS)


def _window(now: float) -> float:
    """Return the seconds the recent counts span: the previous bucket and the current part."""
    return BUCKET_SECONDS + (now - _bucket(now) * BUCKET_SECONDS)


def _recent(bucket: int | None, count_now: int | None, count_before: int | None, now: float) -> int:
    current = _bucket(now)
    if bucket == current:
        return int(count_now or 0) + int(count_before or 0)
    if bucket == current - 1:
        return int(count_now or 0)
    return 0


def _completed_recently(row: Sequence[Any], now: float) -> int:
    bucket, completed_now, completed_before = row
    return _recent(bucket, completed_now, completed_before, now)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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
        result=None if row[10] is None else bytes(row[10]),
        error=error,
        cancel_requested=bool(row[14]),
        progress=row[15],
        progress_message=row[16],
        idempotency_key=row[17],
        note=row[18],
        version=row[19],
    )
