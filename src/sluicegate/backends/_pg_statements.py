"""SQL statements of the PostgreSQL backend, with ``{s}`` standing for the schema.

:func:`compile_statements` renders them once per backend with the schema
quoted as an identifier. Values are always query parameters; times are
Unix seconds passed by the client (see :mod:`sluicegate.backends.postgres_schema`).
Batches travel as arrays and are expanded with ``unnest``, so settling or
enqueueing many messages costs one statement per kind of change.
"""

from __future__ import annotations

from psycopg import sql

from sluicegate.backends.postgres_schema import DELAYED, READY, RESERVED

_R, _S, _D = str(READY), str(RESERVED), str(DELAYED)

# The counter row of the producer side; one round trip returns everything the
# bound check needs. The queue_removals row is created here on first use. Bounds
# that are not declared (see QueueBounds) leave the stored ones unchanged.
ADMIT = """
WITH counter AS (
    INSERT INTO {s}.queues AS q (name, max_length, max_wait, enqueued, bucket, enqueued_now)
    VALUES (%(queue)s, CASE WHEN %(declared)s THEN %(max_length)s::int8 END,
        CASE WHEN %(declared)s THEN %(max_wait)s::float8 END, %(count)s, %(bucket)s, %(count)s)
    ON CONFLICT (name) DO UPDATE SET
        max_length = CASE WHEN %(declared)s THEN excluded.max_length ELSE q.max_length END,
        max_wait = CASE WHEN %(declared)s THEN excluded.max_wait ELSE q.max_wait END,
        enqueued = q.enqueued + %(count)s,
        enqueued_before = CASE q.bucket WHEN %(bucket)s THEN q.enqueued_before
            WHEN %(bucket)s - 1 THEN q.enqueued_now ELSE 0 END,
        enqueued_now = (CASE q.bucket WHEN %(bucket)s THEN q.enqueued_now ELSE 0 END) + %(count)s,
        bucket = %(bucket)s
    RETURNING q.enqueued
), created AS (
    INSERT INTO {s}.queue_removals (name) VALUES (%(queue)s) ON CONFLICT (name) DO NOTHING
)
SELECT counter.enqueued, r.removed, r.bucket, r.completed_now, r.completed_before
FROM counter LEFT JOIN {s}.queue_removals r ON r.name = %(queue)s
"""

# ADMIT, INSERT_MESSAGES, INSERT_JOBS and the wake-up in one autocommit statement, for a
# batch with no idempotency keys and a queue with no max_wait: one round trip instead of
# six. The counter row is updated only if the batch fits, so a rejected batch changes
# nothing. A new queue's row is inserted unconditionally, so the caller routes a batch
# longer than max_length to the transaction. The last columns return the counts that
# QueueFull needs, read before this statement.
ENQUEUE_AT_ONCE = (
    """
WITH admitted AS (
    INSERT INTO {s}.queues AS q (name, max_length, max_wait, enqueued, bucket, enqueued_now)
    VALUES (%(queue)s, CASE WHEN %(declared)s THEN %(max_length)s::int8 END, NULL, %(count)s,
        %(bucket)s, %(count)s)
    ON CONFLICT (name) DO UPDATE SET
        max_length = CASE WHEN %(declared)s THEN excluded.max_length ELSE q.max_length END,
        max_wait = CASE WHEN %(declared)s THEN NULL ELSE q.max_wait END,
        enqueued = q.enqueued + %(count)s,
        enqueued_before = CASE q.bucket WHEN %(bucket)s THEN q.enqueued_before
            WHEN %(bucket)s - 1 THEN q.enqueued_now ELSE 0 END,
        enqueued_now = (CASE q.bucket WHEN %(bucket)s THEN q.enqueued_now ELSE 0 END) + %(count)s,
        bucket = %(bucket)s
    WHERE q.enqueued + %(count)s - coalesce(
        (SELECT r.removed FROM {s}.queue_removals r WHERE r.name = %(queue)s), 0
    ) <= %(max_length)s
    RETURNING q.enqueued
), created AS (
    INSERT INTO {s}.queue_removals (name) VALUES (%(queue)s) ON CONFLICT (name) DO NOTHING
), messages AS (
    INSERT INTO {s}.messages (id, queue, state, prio, order_at, due_at, enqueued_at, body)
    SELECT id, %(queue)s, CASE WHEN ready_at <= %(now)s THEN """
    + _R
    + " ELSE "
    + _D
    + """ END,
        prio, ready_at, CASE WHEN ready_at <= %(now)s THEN NULL ELSE ready_at END,
        enqueued_at, body
    FROM unnest(%(ids)s::text[], %(prios)s::int4[], %(ready_at)s::float8[],
                %(enqueued_at)s::float8[], %(bodies)s::bytea[])
        AS u(id, prio, ready_at, enqueued_at, body)
    WHERE EXISTS (SELECT FROM admitted)
), jobs AS (
    INSERT INTO {s}.jobs (id, task, queue, state, created_at, eta)
    SELECT id, task, %(queue)s, 'queued', created_at, eta
    FROM unnest(%(job_ids)s::text[], %(tasks)s::text[], %(created_at)s::float8[],
                %(etas)s::float8[]) AS u(id, task, created_at, eta)
    WHERE EXISTS (SELECT FROM admitted)
)
SELECT EXISTS (SELECT FROM admitted),
    CASE WHEN %(wake)s AND EXISTS (SELECT FROM admitted) THEN pg_notify(%(channel)s, '') END,
    q.enqueued, r.removed, r.bucket, r.completed_now, r.completed_before
FROM (VALUES (1)) AS one(n)
LEFT JOIN {s}.queues q ON q.name = %(queue)s
LEFT JOIN {s}.queue_removals r ON r.name = %(queue)s
"""
)

OLDEST_READY = (
    """
SELECT least(
    (SELECT min(order_at) FROM {s}.messages WHERE queue = %(queue)s AND state = """
    + _R
    + """),
    (SELECT min(due_at) FROM {s}.messages
     WHERE queue = %(queue)s AND state = """
    + _D
    + """ AND due_at <= %(now)s))
"""
)

LOCK_KEYS = """
SELECT pg_advisory_xact_lock(hashtext(%(namespace)s), hashtext(key))
FROM unnest(%(keys)s::text[]) WITH ORDINALITY AS k(key, position) ORDER BY position
"""

MATCH_KEYS = """
SELECT k.key, k.job_id FROM {s}.idempotency_keys k JOIN {s}.jobs j ON j.id = k.job_id
WHERE k.key = ANY(%(keys)s::text[]) AND (j.expires_at IS NULL OR j.expires_at > %(now)s)
"""

INSERT_MESSAGES = """
INSERT INTO {s}.messages (id, queue, state, prio, order_at, due_at, enqueued_at, body)
SELECT * FROM unnest(%s::text[], %s::text[], %s::int2[], %s::int4[], %s::float8[],
                     %s::float8[], %s::float8[], %s::bytea[])
"""

INSERT_JOBS = """
INSERT INTO {s}.jobs (id, task, queue, state, created_at, eta, idempotency_key)
SELECT id, task, queue, 'queued', created_at, eta, key
FROM unnest(%s::text[], %s::text[], %s::text[], %s::float8[], %s::float8[], %s::text[])
    AS u(id, task, queue, created_at, eta, key)
"""

# A key whose job's retention ended is taken over by the new job.
UPSERT_KEYS = """
INSERT INTO {s}.idempotency_keys (key, job_id)
SELECT * FROM unnest(%s::text[], %s::text[])
ON CONFLICT (key) DO UPDATE SET job_id = excluded.job_id
"""

EXISTING_JOBS = "SELECT id FROM {s}.jobs WHERE id = ANY(%s::text[])"
EXISTING_MESSAGES = "SELECT id FROM {s}.messages WHERE id = ANY(%s::text[])"

NOTIFY = "SELECT pg_notify(%s, '')"

# Delayed messages whose time came, and reserved ones whose lease expired, become
# ready, and the jobs of expired leases go back to queued. SKIP LOCKED lets several
# workers promote at once without waiting on each other. It needs no result before
# RESERVE runs, so the two share a round trip in pipeline mode.
PROMOTE_DUE = (
    """
WITH due AS (
    SELECT id, state, worker FROM {s}.messages
    WHERE due_at <= %(now)s AND (state = """
    + _D
    + " OR (state = "
    + _S
    + """ AND due_at < %(now)s))
    ORDER BY due_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), promoted AS (
    UPDATE {s}.messages m SET state = """
    + _R
    + """, due_at = NULL, worker = NULL
    FROM due WHERE m.id = due.id
    RETURNING m.id, m.queue, due.state AS was, due.worker, m.deliveries
), requeued AS (
    UPDATE {s}.jobs j SET state = 'queued', version = j.version + 1
    FROM promoted p WHERE j.id = p.id AND p.was = """
    + _S
    + """ AND j.state = 'running'
)
SELECT id, queue, was, worker, deliveries FROM promoted
"""
)

# Leases messages and marks their jobs running in one round trip. It locks each
# message row before its job row, the order every other path uses. A message without
# a job record (a plain queue message) returns a null cancel_requested.
RESERVE = (
    """
WITH picked AS (
    SELECT id FROM {s}.messages WHERE queue = %(queue)s AND state = """
    + _R
    + """
    ORDER BY prio, order_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), leased AS (
    UPDATE {s}.messages m SET state = """
    + _S
    + """, due_at = %(lease_until)s, fence = m.fence + 1,
        deliveries = m.deliveries + 1, worker = %(worker)s
    FROM picked WHERE m.id = picked.id
    RETURNING m.id, m.queue, m.fence, m.deliveries, m.enqueued_at, m.body, m.prio, m.order_at
), started AS (
    UPDATE {s}.jobs j SET state = 'running', attempts = j.attempts + 1,
        started_at = %(now)s, version = j.version + 1
    FROM leased WHERE j.id = leased.id
    RETURNING j.id, j.cancel_requested
)
SELECT leased.*, started.cancel_requested
FROM leased LEFT JOIN started ON started.id = leased.id
"""
)

# The fencing condition of every settlement: the delivery's fence, still reserved,
# and a lease that has not expired (a lease ending exactly now still counts).
_HELD = "m.id = s.id AND m.fence = s.fence AND m.state = " + _S + " AND m.due_at >= %(now)s"

ACK = (
    """
DELETE FROM {s}.messages m USING unnest(%(ids)s::text[], %(fences)s::int4[]) AS s(id, fence)
WHERE """
    + _HELD
    + """
RETURNING m.id, m.fence, m.queue
"""
)

RETRY_LATER = (
    """
UPDATE {s}.messages m SET state = """
    + _D
    + """, due_at = s.ready_at, order_at = s.ready_at, worker = NULL,
    deliveries = m.deliveries - s.uncount::int
FROM unnest(%(ids)s::text[], %(fences)s::int4[], %(ready_at)s::float8[], %(uncount)s::bool[])
    AS s(id, fence, ready_at, uncount)
WHERE """
    + _HELD
    + """
RETURNING m.id, m.fence, m.queue
"""
)

# A retry or a deferral goes to the back of its queue; a release (shutdown)
# keeps its place. Neither a release nor a deferral counts as a delivery.
RETRY_NOW = (
    """
UPDATE {s}.messages m SET state = """
    + _R
    + """, due_at = NULL, worker = NULL,
    order_at = CASE WHEN s.release THEN m.order_at ELSE %(now)s END,
    deliveries = m.deliveries - s.uncount::int
FROM unnest(%(ids)s::text[], %(fences)s::int4[], %(release)s::bool[], %(uncount)s::bool[])
    AS s(id, fence, release, uncount)
WHERE """
    + _HELD
    + """
RETURNING m.id, m.fence, m.queue
"""
)

DEAD_LETTER = (
    """
WITH moved AS (
    DELETE FROM {s}.messages m
    USING unnest(%(ids)s::text[], %(fences)s::int4[], %(reasons)s::text[]) AS s(id, fence, reason)
    WHERE """
    + _HELD
    + """
    RETURNING m.id, m.queue, m.prio, m.fence, m.deliveries, m.enqueued_at, s.reason, m.body
)
INSERT INTO {s}.dead_letters
    (id, queue, prio, fence, deliveries, enqueued_at, reason, dead_at, body)
SELECT id, queue, prio, fence, deliveries, enqueued_at, reason, %(now)s, body FROM moved
RETURNING id, fence, queue
"""
)

# A success clears an earlier attempt's error, a new error replaces it whole, and an
# update without one (an empty type) keeps it, as in the SQLite backend.
UPDATE_JOBS = """
UPDATE {s}.jobs j SET
    state = u.state,
    version = j.version + 1,
    result = coalesce(u.result, j.result),
    error_type = CASE WHEN u.state = 'succeeded' THEN NULL
        WHEN u.error_type <> '' THEN u.error_type ELSE j.error_type END,
    error_message = CASE WHEN u.state = 'succeeded' THEN NULL
        WHEN u.error_type <> '' THEN u.error_message ELSE j.error_message END,
    error_traceback = CASE WHEN u.state = 'succeeded' THEN NULL
        WHEN u.error_type <> '' THEN u.error_traceback ELSE j.error_traceback END,
    note = CASE WHEN u.note IS NULL THEN j.note ELSE nullif(u.note, '') END,
    finished_at = u.finished_at,
    expires_at = u.expires_at,
    attempts = j.attempts - u.uncounted,
    eta = coalesce(u.eta, j.eta)
FROM unnest(%s::text[], %s::text[], %s::bytea[], %s::text[], %s::text[], %s::text[], %s::text[],
            %s::float8[], %s::float8[], %s::int4[], %s::float8[])
    AS u(id, state, result, error_type, error_message, error_traceback, note,
         finished_at, expires_at, uncounted, eta)
WHERE j.id = u.id
"""

COUNT_REMOVED = """
UPDATE {s}.queue_removals SET
    removed = removed + %(removed)s,
    completed_before = CASE bucket WHEN %(bucket)s THEN completed_before
        WHEN %(bucket)s - 1 THEN completed_now ELSE 0 END,
    completed_now = (CASE bucket WHEN %(bucket)s THEN completed_now ELSE 0 END) + %(completed)s,
    bucket = %(bucket)s
WHERE name = %(queue)s
"""

EXTEND = (
    """
UPDATE {s}.messages m SET due_at = %(lease_until)s
FROM unnest(%(ids)s::text[], %(fences)s::int4[]) AS s(id, fence)
WHERE """
    + _HELD
    + """
RETURNING m.id, m.fence
"""
)

_JOB_COLUMNS = (
    "id, task, queue, state, attempts, created_at, eta, started_at, finished_at, expires_at, "
    "result, error_type, error_message, error_traceback, cancel_requested, progress, "
    "progress_message, idempotency_key, note, version"
)
_UNEXPIRED = "(expires_at IS NULL OR expires_at > %(now)s)"

GET_JOB = "SELECT " + _JOB_COLUMNS + " FROM {s}.jobs WHERE id = %(id)s AND " + _UNEXPIRED
GET_JOBS = (
    "SELECT " + _JOB_COLUMNS + " FROM {s}.jobs WHERE id = ANY(%(ids)s::text[]) AND " + _UNEXPIRED
)
JOB_STATE = "SELECT state FROM {s}.jobs WHERE id = %s"

# Locks the message row before the job row, the order every other path uses.
CANCEL_MESSAGE = (
    "DELETE FROM {s}.messages WHERE id = %s AND state IN (" + _R + ", " + _D + ") RETURNING queue"
)
CANCEL_PENDING_JOB = """
UPDATE {s}.jobs SET state = 'cancelled', cancel_requested = true, finished_at = %(now)s,
    expires_at = %(expires_at)s, note = 'cancelled before it ran', version = version + 1
WHERE id = %(id)s
"""
REQUEST_CANCEL_RUNNING = """
UPDATE {s}.jobs SET cancel_requested = true, version = version + 1
WHERE id = %s AND state = 'running'
"""
CANCEL_REQUESTS = "SELECT id FROM {s}.jobs WHERE id = ANY(%s::text[]) AND cancel_requested"

SET_PROGRESS = (
    """
UPDATE {s}.jobs SET progress = %(fraction)s, progress_message = %(message)s,
    version = version + 1
WHERE id = %(id)s AND EXISTS (
    SELECT 1 FROM {s}.messages WHERE id = %(id)s AND fence = %(fence)s AND state = """
    + _S
    + """)
"""
)

PURGE_EXPIRED = """
WITH gone AS (
    DELETE FROM {s}.jobs WHERE id IN (
        SELECT id FROM {s}.jobs WHERE expires_at <= %(now)s
        LIMIT %(limit)s FOR UPDATE SKIP LOCKED
    ) RETURNING id
), keys AS (
    DELETE FROM {s}.idempotency_keys WHERE job_id IN (SELECT id FROM gone)
)
SELECT count(*) FROM gone
"""

QUEUE_ROWS = """
SELECT q.name, q.max_length, q.max_wait, q.bucket, q.enqueued_now, q.enqueued_before,
    r.bucket, r.completed_now, r.completed_before
FROM {s}.queues q LEFT JOIN {s}.queue_removals r ON r.name = q.name
WHERE %(queue)s::text IS NULL OR q.name = %(queue)s
ORDER BY q.name
"""

# Due delayed messages count as ready, and reserved ones whose lease expired
# count as ready in their original place, until the next reserve moves them.
_DUE = "(state = " + _D + " AND due_at <= %(now)s)"
_EXPIRED = "(state = " + _S + " AND due_at < %(now)s)"

QUEUE_COUNTS = (
    "SELECT count(*) FILTER (WHERE state = "
    + _R
    + " OR "
    + _DUE
    + " OR "
    + _EXPIRED
    + "), count(*) FILTER (WHERE state = "
    + _D
    + " AND due_at > %(now)s), count(*) FILTER (WHERE state = "
    + _S
    + " AND due_at >= %(now)s), least(min(order_at) FILTER (WHERE state = "
    + _R
    + "), min(due_at) FILTER (WHERE "
    + _DUE
    + "), min(order_at) FILTER (WHERE "
    + _EXPIRED
    + ")) FROM {s}.messages WHERE queue = %(queue)s"
)

DEAD_COUNT = "SELECT count(*) FROM {s}.dead_letters WHERE queue = %s"

LENGTH = """
SELECT q.enqueued - coalesce(r.removed, 0)
FROM {s}.queues q LEFT JOIN {s}.queue_removals r ON r.name = q.name WHERE q.name = %s
"""

DEAD_LETTERS = """
SELECT id, queue, body, reason, dead_at, deliveries FROM {s}.dead_letters
WHERE queue = %s ORDER BY dead_at, id LIMIT %s
"""

# A retried dead letter keeps its fence, so a delivery from before it died stays stale.
RETRY_DEAD = (
    """
WITH revived AS (
    DELETE FROM {s}.dead_letters
    WHERE queue = %(queue)s AND (%(ids)s::text[] IS NULL OR id = ANY(%(ids)s::text[]))
    RETURNING id, queue, prio, fence, enqueued_at, body
), inserted AS (
    INSERT INTO {s}.messages (id, queue, state, prio, order_at, fence, enqueued_at, body)
    SELECT id, queue, """
    + _R
    + """, prio, %(now)s, fence, enqueued_at, body FROM revived
    RETURNING id
), jobs AS (
    UPDATE {s}.jobs SET state = 'queued', attempts = 0, finished_at = NULL, expires_at = NULL,
        note = 'retried from the dead-letter queue', version = version + 1
    WHERE id IN (SELECT id FROM inserted)
)
SELECT count(*) FROM inserted
"""
)

COUNT_REVIVED = "UPDATE {s}.queues SET enqueued = enqueued + %s WHERE name = %s"

PURGE_DEAD = """
DELETE FROM {s}.dead_letters
WHERE queue = %(queue)s AND (%(ids)s::text[] IS NULL OR id = ANY(%(ids)s::text[]))
"""

NEXT_DUE = "SELECT min(due_at) FROM {s}.messages WHERE due_at IS NOT NULL"

ACQUIRE_LOCK = """
INSERT INTO {s}.locks AS l (name, holder, expires_at) VALUES (%(name)s, %(holder)s, %(until)s)
ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
WHERE l.holder = excluded.holder OR l.expires_at <= %(now)s
RETURNING holder
"""
RELEASE_LOCK = "DELETE FROM {s}.locks WHERE name = %s AND holder = %s"
LOCK_HOLDER = "SELECT holder, expires_at FROM {s}.locks WHERE name = %s AND expires_at > %s"

GET_VALUE = "SELECT value FROM {s}.kv WHERE key = %s"
INSERT_VALUE = "INSERT INTO {s}.kv (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING"
REPLACE_VALUE = "UPDATE {s}.kv SET value = %s WHERE key = %s AND value = %s"
DELETE_VALUE = "DELETE FROM {s}.kv WHERE key = %s AND value = %s"
KEYS = "SELECT key FROM {s}.kv WHERE starts_with(key, %s) ORDER BY key"


def compile_statements(schema: str) -> dict[str, bytes]:
    """Render every statement above for ``schema``, keyed by its name."""
    identifier = sql.Identifier(schema)
    compiled: dict[str, bytes] = {}
    for name, template in globals().items():
        if name.isupper() and not name.startswith("_") and isinstance(template, str):
            query = sql.SQL(template).format(s=identifier)
            compiled[name] = query.as_bytes(None)
    return compiled
