"""Broker and store on Redis: ``redis://``, ``rediss://``, ``redis+sentinel://`` and
``redis+cluster://`` URLs.

Layout: sorted sets and hashes, listed in :mod:`sluicegate.backends.redis_keys`.
A queue keeps its ready messages in one sorted set per priority, scored by
the time each became ready. Delayed messages wait in a sorted set scored by
ready time, and reserved ones in a lease sorted set scored by lease expiry.
Sorted sets rather than lists or Streams, because every step needs
to find a message by id in the middle of a queue: a lease that expires goes
back to its old place, a cancelled job leaves the queue, a retry waits out a
delay. Streams with XAUTOCLAIM would redeliver an idle entry, but they give
no priorities, no delayed entries and no fencing token.

Atomicity: each step is one Lua script (:mod:`sluicegate.backends.redis_scripts`),
so the bound check and the insert of ``enqueue_jobs`` cannot interleave
with another producer, and ``exchange`` settles and reserves in one round
trip. Settling checks the message's fence, which grows at each delivery, and
its lease expiry, so a worker whose lease expired cannot settle.

Time: every script takes the current time from the caller (``clock``,
default ``time.time``), never from Redis, so the hosts' clocks must roughly
agree. Each attempt of a retried call reads the clock again. A final job
record keeps ``expires_at`` and also gets a Redis expiry of its retention,
so it disappears even if nobody calls ``purge_expired``.

Durability: ``enqueue`` returns once Redis applied the write, which is only
as durable as the server's persistence. With ``appendonly yes`` and
``appendfsync everysec`` a crash of the server's host loses up to about one
second of writes; ``appendfsync always`` loses none. With RDB snapshots
alone, or no persistence, a crash loses everything since the last snapshot:
enqueued jobs, settled outcomes and leases alike. ``durable`` is accepted
for the App's sake and changes nothing here.

Connection loss: a command that fails with a connection error or a timeout
is retried with exponential backoff for up to ``reconnect_timeout``
seconds, logging the server's address without its password, and then raises
``StoreUnavailable``. Retrying a script is safe: ``enqueue_jobs`` skips ids
it created already, and ``exchange`` carries a token under which the server
keeps its reply for a minute, so a retried call returns the deliveries of the
first one instead of leasing more. The replay extends the lease of each of those
deliveries from the retry's time, and leaves out any whose lease another
call already took back.

Malformed messages: ``exchange`` checks every field it reads from a message
hash before it writes anything. A message with a missing or non-numeric field
goes to the dead-letter queue with the reason, an id whose hash is missing
leaves its set, and the call logs both.

Cluster: all keys of one prefix share one hash slot (see the key module), so
the scripts run on Redis Cluster too, without sharding a prefix. A
``redis+cluster://`` URL names some of the cluster's nodes, and the backend
talks only to the master that owns the prefix's slot. It finds that master in
the slot map and switches to the node that a ``MOVED`` reply names. After a
lost connection or a ``CLUSTERDOWN``, ``TRYAGAIN`` or ``ASK`` reply it reads
the map again, within the same retry window as a lost connection.
:mod:`sluicegate.backends._redis_route` explains why it does not use redis-py's
cluster client. A cluster thus gives a prefix failover to a replica, and
separate prefixes spread over the masters.

Move a prefix's slot to another master only while no process uses the
prefix. Redis migrates a slot key by key, and a script that runs meanwhile
fails on the first key that already moved but keeps the writes it made before.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    OutOfMemoryError,
    TryAgainError,
)
from redis.retry import Retry
from redis.sentinel import Sentinel

from sluicegate.backends import redact
from sluicegate.backends._exchange import ExchangeShortcuts
from sluicegate.backends._pipe_waiter import PipeWaiter
from sluicegate.backends._redis_packer import command_packer
from sluicegate.backends._redis_route import (
    CLUSTER_SCHEMES,
    ClusterRoute,
    FixedRoute,
    Route,
    parse_cluster_url,
)
from sluicegate.backends._redis_wakeup import ChannelHub
from sluicegate.backends.redis_keys import DEFAULT_PREFIX, JOB_FIELDS, Keys
from sluicegate.backends.redis_scripts import (
    ACQUIRE_LOCK,
    CANCEL,
    COMPARE_AND_SET,
    DEAD_LETTERS,
    ENQUEUE,
    EXCHANGE,
    EXTEND,
    LENGTH,
    NEXT_DUE,
    PROGRESS,
    PURGE_DEAD,
    PURGE_EXPIRED,
    RELEASE_LOCK,
    RETRY_DEAD,
    STATS,
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

T = TypeVar("T")

#: Width in seconds of one rate bucket, as in the SQLite backend.
BUCKET_SECONDS = 30

#: Default seconds to keep retrying a command while the server is unreachable.
DEFAULT_RECONNECT_TIMEOUT = 60.0

#: Bounds, in seconds, of the backoff between two attempts after a connection error.
MIN_BACKOFF = 0.05
MAX_BACKOFF = 2.0

#: After the first failed attempt, log every this many further ones.
LOG_EVERY_ATTEMPTS = 10

#: ``MOVED`` replies that a command follows at once. Past them it waits with backoff,
#: because nodes that redirect to each other do not agree on the slot's owner yet.
MAX_REDIRECTS = 5

#: Errors after which a command is retried: a lost connection, and a cluster that is
#: failing over (``CLUSTERDOWN``, ``MASTERDOWN``) or migrating the slot (``TRYAGAIN``, ``ASK``).
RETRIED_ERRORS = (
    redis.ConnectionError,
    redis.TimeoutError,
    ClusterDownError,
    TryAgainError,
    AskError,
)

#: Job records read per round trip in ``get_jobs`` and records purged per script call.
BATCH = 500

SCHEMES = ("redis", "rediss", "redis+sentinel", *CLUSTER_SCHEMES)


class RedisBackend(ExchangeShortcuts):
    """Broker and store on one Redis server, Sentinel-managed primary or cluster master.

    Parameters:
      url: ``redis://[[user]:password@]host:port/db``, ``rediss://...`` for TLS,
        ``redis+sentinel://[:password@]host:port[,host:port...]/service/db``, or
        ``redis+cluster://[[user]:password@]host:port[,host:port...][/0]``
        (``rediss+cluster://`` for TLS) for some nodes of a Redis Cluster.
        A ``prefix`` query parameter sets the key prefix; other query
        parameters go to redis-py (e.g. ``?socket_timeout=5``).
      prefix: the key prefix if the URL names none (default ``sluicegate``).
      clock: returns the current Unix time; tests pass a controllable one.
      reconnect_timeout: seconds a command keeps retrying after a connection error.
      socket_timeout: seconds a command may wait for the server before it counts as failed.
      durable: accepted for the App's sake; Redis persistence decides durability.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str | None = None,
        clock: Callable[[], float] = time.time,
        reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT,
        socket_timeout: float = 10.0,
        durable: bool = True,
    ) -> None:
        url, url_prefix = split_prefix(url)
        if url_prefix is not None:
            prefix = url_prefix
        self.layout = Keys(DEFAULT_PREFIX if prefix is None else prefix)
        self.clock = clock
        self.reconnect_timeout = reconnect_timeout
        self.durable = durable
        self.address = describe(url)
        self._route = connect(url, socket_timeout, self.layout.tag)
        self._routing = [self.layout.queues]
        self._hubs: dict[str, ChannelHub] = {}
        self._hubs_lock = threading.Lock()
        self._scripts = {
            name: LuaScript(source)
            for name, source in (
                ("enqueue", ENQUEUE),
                ("exchange", EXCHANGE),
                ("extend", EXTEND),
                ("length", LENGTH),
                ("next_due", NEXT_DUE),
                ("stats", STATS),
                ("cancel", CANCEL),
                ("progress", PROGRESS),
                ("purge_expired", PURGE_EXPIRED),
                ("dead_letters", DEAD_LETTERS),
                ("retry_dead", RETRY_DEAD),
                ("purge_dead", PURGE_DEAD),
                ("acquire_lock", ACQUIRE_LOCK),
                ("release_lock", RELEASE_LOCK),
                ("compare_and_set", COMPARE_AND_SET),
            )
        }

    def __repr__(self) -> str:
        return f"RedisBackend({self.address!r}, prefix={self.layout.prefix!r})"

    # -- connection

    @property
    def _client(self) -> redis.Redis:
        """The client of the server in use now (on a cluster, of the prefix's master)."""
        return self._route.client()

    def _retrying(self, operation: Callable[[redis.Redis], T]) -> T:
        """Run ``operation`` on the current client, retrying while the server is unavailable.

        A lost connection or a cluster error (see ``RETRIED_ERRORS``) is
        retried with backoff until ``reconnect_timeout`` has passed, and then
        raises ``StoreUnavailable``. A ``MOVED`` reply switches a cluster route
        to the node it names and is retried at once.
        """
        deadline = time.monotonic() + self.reconnect_timeout
        delay = MIN_BACKOFF
        failures = 0
        redirects = 0
        while True:
            client: redis.Redis | None = None
            try:
                client = self._route.client()
                result = operation(client)
            except MovedError as exc:
                assert client is not None
                self._route.moved(client, exc)
                redirects += 1
                if redirects <= MAX_REDIRECTS:
                    continue
                error: redis.RedisError = exc
            except OutOfMemoryError as exc:
                # Retrying would only wait, because memory frees only when consumers drain
                # or an operator acts. The producer gets the error at once, as at a full queue.
                raise StoreUnavailable(
                    f"Redis at {self.address} rejected a write because it reached maxmemory "
                    f"({_brief(exc)}); raise maxmemory, free memory, or retry later"
                ) from exc
            except RETRIED_ERRORS as exc:
                self._route.failed(client)
                error = exc
            else:
                if failures:
                    logger.info(
                        "redis connection restored address=%s failed_attempts=%d",
                        self.address,
                        failures,
                    )
                return result
            failures += 1
            self._wait_to_retry(error, failures, delay, deadline)
            delay = min(delay * 2, MAX_BACKOFF)

    def _wait_to_retry(
        self, error: redis.RedisError, failures: int, delay: float, deadline: float
    ) -> None:
        """Sleep about ``delay`` seconds before the next attempt, or raise past ``deadline``."""
        if time.monotonic() + delay > deadline:
            raise StoreUnavailable(
                f"Redis at {self.address} unreachable for "
                f"{self.reconnect_timeout:g}s: {_brief(error)}"
            ) from error
        if failures == 1 or failures % LOG_EVERY_ATTEMPTS == 0:
            if isinstance(error, (redis.ConnectionError, redis.TimeoutError)):
                event = "redis connection lost, reconnecting"
            else:
                event = "redis cluster unavailable, retrying"
            logger.warning(
                "%s address=%s attempt=%d delay_s=%.2f error=%s",
                event,
                self.address,
                failures,
                delay,
                _brief(error),
            )
        time.sleep(random.uniform(delay / 2, delay))

    def _run(self, script: str, args: Sequence[Any]) -> Any:
        call = self._scripts[script]
        script_args = [self.layout.tag, *args]
        return self._retrying(
            lambda client: call(keys=self._routing, args=script_args, client=client)
        )

    def _run_timed(self, script: str, build: Callable[[float], Sequence[Any]]) -> tuple[float, Any]:
        """Run a script whose arguments contain the current time; return that time and the reply.

        Each attempt reads the clock and builds its arguments again, so a call
        retried after an outage computes leases and expiries from the time it
        reaches the server, not from the time of the first attempt.
        """
        call = self._scripts[script]

        def attempt(client: redis.Redis) -> tuple[float, Any]:
            now = self.clock()
            script_args = [self.layout.tag, *build(now)]
            return now, call(keys=self._routing, args=script_args, client=client)

        return self._retrying(attempt)

    def ping(self) -> None:
        """Raise if the server cannot be reached (after the reconnect window)."""
        self._retrying(lambda client: client.ping())

    def close(self) -> None:
        """Close every connection this backend opened."""
        with self._hubs_lock:
            hubs, self._hubs = list(self._hubs.values()), {}
        for hub in hubs:
            hub.close()
        self._route.close()

    # -- enqueue

    def enqueue_jobs(self, jobs: Sequence[NewJob], bounds: QueueBounds) -> list[EnqueueResult]:
        """Create job records and their messages in one queue, all or none.

        A job whose idempotency key is held by a readable job is not created;
        its result names that job. Raises ``QueueFull`` if the new messages
        do not fit under ``bounds``.
        """
        if not jobs:
            return []
        entries = [(job.message, job.task, job.idempotency_key or "") for job in jobs]
        reply = self._enqueue(entries, bounds)
        return [
            EnqueueResult(_text(reply[i]), created=bool(int(reply[i + 1])))
            for i in range(0, len(reply), 2)
        ]

    def publish(self, messages: Sequence[OutgoingMessage], bounds: QueueBounds) -> None:
        """Add plain messages (no job records) to one queue, all or none."""
        if messages:
            self._enqueue([(message, "", "") for message in messages], bounds)

    def _enqueue(
        self, entries: Sequence[tuple[OutgoingMessage, str, str]], bounds: QueueBounds
    ) -> list[Any]:
        queue = entries[0][0].queue
        values: list[Any] = [
            queue,
            bounds.max_length,
            "" if bounds.max_wait is None else repr(float(bounds.max_wait)),
            "1" if bounds.declared else "",
            len(entries),
        ]
        for message, task, key in entries:
            values += [
                message.id,
                message.body,
                message.priority,
                repr(float(message.ready_at)),
                repr(float(message.enqueued_at)),
                task,
                key,
            ]
        now, reply = self._run_timed("enqueue", lambda now: [repr(now), _bucket(now), *values])
        if _text(reply[0]) == "full":
            reason, excess, rates = _text(reply[1]), int(reply[2]), reply[3]
            _, completed, window = _recent_counts(rates, now)
            limit: float = bounds.max_length
            if reason == "max_wait":
                limit = bounds.max_wait or 0.0
            raise QueueFull(queue, reason, limit, estimate_retry_after(excess, completed, window))
        return list(reply[1])

    # -- reserve, settle, extend

    def exchange(
        self,
        settlements: Sequence[Settlement],
        queues: Sequence[str],
        limit: int,
        lease: float,
        worker: str,
    ) -> tuple[list[bool], list[Delivery]]:
        """Settle and reserve as :meth:`Backend.exchange` describes, in one script call."""
        if not settlements and (limit <= 0 or not queues):
            return [], []
        # Rotate the starting queue so one busy queue cannot starve the others.
        start = random.randrange(len(queues)) if queues else 0
        ordered = [*queues[start:], *queues[:start]] if limit > 0 else []
        # One token for every attempt: a retry whose first attempt landed gets its reply.
        token = os.urandom(12).hex()

        def build(now: float) -> list[Any]:
            args: list[Any] = [
                repr(now),
                _bucket(now),
                token,
                repr(now + lease),
                worker,
                max(limit, 0),
                len(ordered),
                *ordered,
                len(settlements),
            ]
            for settlement in settlements:
                _settlement_args(settlement, now, args)
            return args

        now, reply = self._run_timed("exchange", build)
        settled, rows, expired, rejected = reply
        # The script leased every delivery, including one replayed from the reply of a
        # landed first attempt, until this attempt's time plus the lease.
        lease_until = now + lease
        for i in range(0, len(expired), 4):
            logger.warning(
                "lease expired, message redelivered message_id=%s queue=%s worker=%s deliveries=%s",
                _text(expired[i]),
                _text(expired[i + 1]),
                _text(expired[i + 2]),
                _text(expired[i + 3]),
            )
        deliveries = [
            Delivery(
                message_id=_text(rows[i]),
                queue=_text(rows[i + 1]),
                fence=int(rows[i + 2]),
                delivery_count=int(rows[i + 3]),
                enqueued_at=float(rows[i + 4]),
                body=bytes(rows[i + 5]),
                lease_until=lease_until,
                cancel_requested=bool(int(rows[i + 6])),
            )
            for i in range(0, len(rows), 7)
        ]
        _log_rejected(rejected)
        return [bool(int(flag)) for flag in settled], deliveries

    def extend(self, deliveries: Sequence[Delivery], lease: float) -> list[bool]:
        """Extend leases to ``lease`` seconds from now; false where the lease was lost."""
        if not deliveries:
            return []
        values: list[Any] = []
        for delivery in deliveries:
            values += [delivery.message_id, delivery.queue, delivery.fence]
        now, reply = self._run_timed("extend", lambda now: [repr(now), repr(now + lease), *values])
        lease_until = now + lease
        held = [bool(int(flag)) for flag in reply]
        for delivery, ok in zip(deliveries, held, strict=True):
            if ok:
                delivery.lease_until = lease_until
        return held

    # -- job records

    def get_job(self, job_id: str) -> JobRecord | None:
        fields = self._retrying(lambda client: client.hmget(self.layout.job(job_id), JOB_FIELDS))
        return _job_from_fields(job_id, fields, self.clock())

    def get_jobs(self, job_ids: Sequence[str]) -> list[JobRecord]:
        records: list[JobRecord] = []
        for start in range(0, len(job_ids), BATCH):
            chunk = list(job_ids[start : start + BATCH])
            rows = self._retrying(functools.partial(self._read_jobs, chunk))
            now = self.clock()
            for job_id, fields in zip(chunk, rows, strict=True):
                record = _job_from_fields(job_id, fields, now)
                if record is not None:
                    records.append(record)
        return records

    def _read_jobs(self, job_ids: Sequence[str], client: redis.Redis) -> list[Any]:
        pipeline = client.pipeline(transaction=False)
        for job_id in job_ids:
            pipeline.hmget(self.layout.job(job_id), JOB_FIELDS)
        return pipeline.execute()

    def request_cancel(self, job_id: str, retention: float) -> JobRecord | None:
        retention_ms = _milliseconds(retention)
        _, state = self._run_timed(
            "cancel", lambda now: [repr(now), job_id, repr(now + retention), retention_ms]
        )
        if state is None:
            return None
        return self.get_job(job_id)

    def cancel_requests(self, job_ids: Sequence[str]) -> set[str]:
        if not job_ids:
            return set()

        def read(client: redis.Redis) -> list[Any]:
            pipeline = client.pipeline(transaction=False)
            for job_id in job_ids:
                pipeline.hget(self.layout.job(job_id), "cancel_requested")
            return pipeline.execute()

        flags = self._retrying(read)
        return {job_id for job_id, flag in zip(job_ids, flags, strict=True) if flag == b"1"}

    def set_progress(self, job_id: str, fence: int, fraction: float, message: str | None) -> bool:
        text = "" if message is None else "=" + message
        return bool(self._run("progress", [job_id, fence, repr(float(fraction)), text]))

    def purge_expired(self, now: float | None = None) -> int:
        fixed = now

        def build(current: float) -> list[Any]:
            return [repr(current if fixed is None else fixed), BATCH]

        total = 0
        for _ in range(10_000):  # At most 5 million records in one call.
            count = int(self._run_timed("purge_expired", build)[1])
            total += count
            if count < BATCH:
                break
        if total:
            logger.info(
                "expired job records purged count=%d address=%s prefix=%s",
                total,
                self.address,
                self.layout.prefix,
            )
        return total

    # -- queues and dead letters

    def stats(self, queue: str | None = None) -> list[QueueStats]:
        names = [queue] if queue else []
        now, rows = self._run_timed("stats", lambda now: [repr(now), *names])
        result = [_stats_from_row(row, now) for row in rows]
        return sorted(result, key=lambda stats: stats.name)

    def length(self, queue: str) -> int:
        """Return the number of live (not dead) messages in ``queue``."""
        return int(self._run("length", [queue]))

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        if limit <= 0:
            return []
        rows = self._run("dead_letters", [queue, limit])
        return [
            DeadLetter(
                message_id=_text(row[0]),
                queue=queue,
                body=bytes(row[1]),
                reason=_text(row[2]),
                dead_at=float(row[3]),
                delivery_count=int(row[4]),
            )
            for row in rows
        ]

    def retry_dead(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        if message_ids is not None and not message_ids:
            return 0
        ids = list(message_ids or [])
        _, reply = self._run_timed("retry_dead", lambda now: [repr(now), queue, *ids])
        count = int(reply)
        if count:
            logger.info("dead letters retried queue=%s count=%d", queue, count)
        return count

    def purge_dead(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        if message_ids is not None and not message_ids:
            return 0
        count = int(self._run("purge_dead", [queue, *(message_ids or [])]))
        if count:
            logger.info("dead letters purged queue=%s count=%d", queue, count)
        return count

    # -- waiting

    def listener(self) -> PipeWaiter:
        """Subscribe to "messages may be ready" signals; the caller closes the waiter."""
        return self._subscribe(self.layout.wake_channel)

    def result_listener(self) -> PipeWaiter:
        """Subscribe to "a job reached a final state" signals; the caller closes the waiter."""
        return self._subscribe(self.layout.results_channel)

    def _subscribe(self, channel: str) -> PipeWaiter:
        """Return a waiter on the backend's one subscription to ``channel``, opened on first use."""
        with self._hubs_lock:
            hub = self._hubs.get(channel)
            if hub is None:
                hub = self._hubs[channel] = ChannelHub(self._route, channel, self.address)
        return self._retrying(hub.subscribe)

    def next_due(self) -> float | None:
        """Return the earliest ready time of a delayed message or lease expiry."""
        due = self._run("next_due", [])
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
        ttl_ms = _milliseconds(ttl)
        _, reply = self._run_timed(
            "acquire_lock", lambda now: [name, holder, repr(now), repr(now + ttl), ttl_ms]
        )
        return bool(reply)

    def release_lock(self, name: str, holder: str) -> bool:
        return bool(self._run("release_lock", [name, holder]))

    def lock_holder(self, name: str) -> tuple[str, float] | None:
        holder, expires_at = self._retrying(
            lambda client: client.hmget(self.layout.lock(name), ["holder", "expires_at"])
        )
        if holder is None or expires_at is None or float(expires_at) <= self.clock():
            return None
        return _text(holder), float(expires_at)

    def get_value(self, key: str) -> bytes | None:
        value: Any = self._retrying(lambda client: client.get(self.layout.value(key)))
        return None if value is None else bytes(value)

    def compare_and_set(self, key: str, expected: bytes | None, value: bytes | None) -> bool:
        args = [key, _optional(expected), _optional(value)]
        return bool(self._run("compare_and_set", args))

    def keys(self, prefix: str) -> list[str]:
        start = b"[" + prefix.encode()
        names = self._retrying(
            lambda client: client.zrangebylex(self.layout.kv_index, start, start + b"\xff")
        )
        return sorted(_text(name) for name in names)

    # -- maintenance

    def delete_all(self) -> int:
        """Delete every key under this backend's prefix; return how many.

        Meant for tests and for tearing down a deployment; other prefixes
        on the same server are untouched.
        """
        client = self._route.client()  # On a cluster, the master that stores the whole prefix.
        deleted = 0
        batch: list[Any] = []
        for key in client.scan_iter(match=self.layout.pattern(), count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += int(client.delete(*batch))
                batch = []
        if batch:
            deleted += int(client.delete(*batch))
        return deleted


class LuaScript:
    """A Lua script run by its SHA1 digest (``EVALSHA``) and loaded into a server that lacks it.

    Unlike redis-py's ``Script``, it is bound to no client, because a cluster
    route changes its client when the prefix's slot moves to another node.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    def __call__(self, *, keys: Sequence[Any], args: Sequence[Any], client: redis.Redis) -> Any:
        try:
            reply: Any = client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            client.script_load(self.source)
            reply = client.evalsha(self.sha, len(keys), *keys, *args)
        return reply


def split_prefix(url: str) -> tuple[str, str | None]:
    """Remove the ``prefix`` query parameter from ``url``; return the URL and the prefix."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefixes = [value for name, value in query if name == "prefix"]
    rest = urlencode([(name, value) for name, value in query if name != "prefix"])
    return urlunsplit(parts._replace(query=rest)), (prefixes[-1] if prefixes else None)


def describe(url: str) -> str:
    """Return the server addresses of ``url`` for logs and errors, without any password.

    A URL that names several hosts (Sentinel, cluster) keeps all of them.
    """
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2].split(",")
    default_port = 26379 if parts.scheme == "redis+sentinel" else 6379
    addresses = ",".join(_with_port(host or "localhost", default_port) for host in hosts)
    return f"{parts.scheme}://{addresses}{parts.path or '/0'}"


def _with_port(host: str, default_port: int) -> str:
    """Append ``default_port`` to a ``host`` or ``[ipv6]`` address that names no port."""
    return f"{host}:{default_port}" if host.endswith("]") or ":" not in host else host


def connect(url: str, socket_timeout: float, slot_key: str) -> Route:
    """Build the route of ``url``; the backend retries failed commands itself.

    ``slot_key`` is a key of the backend's prefix: on a cluster, the route
    talks to the master that owns its slot.
    """
    scheme = url.split("://", 1)[0]
    if scheme not in SCHEMES:
        raise ConfigurationError(f"not a Redis URL: {redact(url)!r}; expected redis://host:port/db")
    options: dict[str, Any] = {
        "retry": Retry(NoBackoff(), 0),
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": min(socket_timeout, 5.0),
        "socket_keepalive": True,
    }
    packer = command_packer()
    if packer is not None:
        options["command_packer"] = packer
    if scheme in CLUSTER_SCHEMES:
        cluster = parse_cluster_url(url)
        seed = redis.Redis.from_url(cluster.node_url(*cluster.seeds[0]), **options)
        try:
            _check_url_options(seed, url)
        finally:
            seed.close()
        return ClusterRoute(cluster, slot_key, options, describe(url))
    if scheme == "redis+sentinel":
        return FixedRoute(_sentinel_client(url, options), describe(url))
    client = redis.Redis.from_url(url, **options)
    _check_url_options(client, url)
    return FixedRoute(client, describe(url))


def _check_url_options(client: redis.Redis, url: str) -> None:
    """Raise ``ConfigurationError`` for a URL option that redis-py's connections reject.

    redis-py hands unknown query parameters to each connection it makes, so
    without this check a misspelt option fails only at the first command.
    """
    pool = client.connection_pool
    try:
        pool.connection_class(**pool.connection_kwargs)
    except TypeError as exc:
        raise ConfigurationError(
            f"invalid option in Redis URL {redact(url)!r}: {exc}; see redis-py's "
            "Redis.from_url for the options it accepts"
        ) from None


def _sentinel_client(url: str, options: dict[str, Any]) -> redis.Redis:
    """Connect to the primary that Sentinel names: ``redis+sentinel://h:p,h:p/service/db``."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    password = None
    if len(netloc) == 2 and ":" in netloc[0]:
        password = unquote(netloc[0].split(":", 1)[1]) or None
    sentinels = []
    for address in netloc[-1].split(","):
        host, _, port = address.rpartition(":")
        if not host:
            host, port = port, "26379"
        sentinels.append((host, int(port)))
    path = [segment for segment in parts.path.split("/") if segment]
    if not path:
        raise ConfigurationError(
            f"{redact(url)!r} names no service; use redis+sentinel://host:port/SERVICE/db"
        )
    database = int(path[1]) if len(path) > 1 else 0
    sentinel = Sentinel(
        sentinels,
        socket_timeout=options["socket_timeout"],
        socket_connect_timeout=options["socket_connect_timeout"],
    )
    client: redis.Redis = sentinel.master_for(path[0], db=database, password=password, **options)
    return client


#: Settlement actions whose ``delay`` the exchange script applies.
_DELAYABLE = frozenset((Action.RETRY, Action.DEFER))

#: The job half of a settlement's script values when the settlement carries no update.
_NO_JOB_ARGS = (0, "", "", "", "", "", "", "", 0, 1)

_NO_ERROR = ErrorInfo("", "")


def _settlement_args(settlement: Settlement, now: float, args: list[Any]) -> None:
    """Append the 16 script values of one settlement to ``args``, as ``EXCHANGE`` reads them.

    It runs once per settled job, on the worker's I/O thread, so it appends in
    place instead of building lists.
    """
    delivery, update, action = settlement.delivery, settlement.job, settlement.action
    delayed = settlement.delay > 0 and action in _DELAYABLE
    args += (
        delivery.message_id,
        delivery.queue,
        delivery.fence,
        action.value,
        repr(now + settlement.delay) if delayed else "",
        settlement.reason or "dead-lettered",
    )
    if update is None:
        args += _NO_JOB_ARGS
        return
    error = update.error or _NO_ERROR
    traceback, note = error.traceback, update.note
    args += (
        1,
        update.state.value,
        _optional(update.result),
        error.type,
        error.message,
        b"" if traceback is None else b"=" + traceback.encode(),
        b"" if note is None else b"=" + note.encode(),
        repr(now + update.retention),
        _milliseconds(update.retention),
        1 if update.count_attempt else 0,
    )


def _log_rejected(rejected: Sequence[Any]) -> None:
    """Log the malformed messages an ``EXCHANGE`` call dead-lettered or removed.

    ``rejected`` contains four values per message: id, queue, ``dead`` or
    ``removed``, and the reason.
    """
    for i in range(0, len(rejected), 4):
        message_id, queue, outcome, reason = (_text(value) for value in rejected[i : i + 4])
        if outcome == "dead":
            logger.error(
                "malformed message dead-lettered message_id=%s queue=%s reason=%s",
                message_id,
                queue,
                reason,
            )
        else:
            logger.warning(
                "malformed message removed from its queue message_id=%s queue=%s reason=%s",
                message_id,
                queue,
                reason,
            )


def _optional(value: bytes | None) -> bytes:
    """Encode an optional value for a script: empty for None, else ``=`` and the value."""
    return b"" if value is None else b"=" + value


def _milliseconds(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _bucket(now: float) -> int:
    return int(now // BUCKET_SECONDS)


def _brief(error: Exception) -> str:
    """Return an error's text cut to 200 characters; redis-py appends whole client reprs."""
    text = str(error)
    return text if len(text) <= 200 else text[:200] + "..."


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _recent_counts(row: Sequence[Any], now: float) -> tuple[int, int, float]:
    """Return messages enqueued and completed over the recent window, and its seconds.

    The window is the previous rate bucket and the elapsed part of the
    current one: between one and two bucket widths.
    """
    bucket, enqueued_now, enqueued_before, completed_now, completed_before = (
        int(value or 0) for value in row
    )
    current = _bucket(now)
    window = BUCKET_SECONDS + (now - current * BUCKET_SECONDS)
    if bucket == current:
        return enqueued_now + enqueued_before, completed_now + completed_before, window
    if bucket == current - 1:
        return enqueued_now, completed_now, window
    return 0, 0, window


def _stats_from_row(row: Sequence[Any], now: float) -> QueueStats:
    name = _text(row[0])
    ready, delayed, due, leased, expired, dead = (int(value) for value in row[1:7])
    oldest, max_length, max_wait = _number(row[7]), row[8], row[9]
    enqueued, completed, window = _recent_counts(row[10:15], now)
    return QueueStats(
        name=name,
        ready=ready + due + expired,
        delayed=delayed - due,
        running=leased - expired,
        dead=dead,
        oldest_ready_age=None if oldest is None else max(now - oldest, 0.0),
        max_length=int(max_length) if max_length is not None else 0,
        max_wait=_number(max_wait),
        enqueue_rate=enqueued / window,
        completion_rate=completed / window,
    )


def _job_from_fields(job_id: str, fields: Sequence[Any], now: float) -> JobRecord | None:
    (
        task,
        queue,
        state_text,
        attempts,
        created_at,
        eta,
        started_at,
        finished_at,
        expires_at,
        result,
        error_type,
        error_message,
        error_traceback,
        cancel_requested,
        progress,
        progress_message,
        idempotency_key,
        note,
        version,
    ) = fields
    if state_text is None:
        return None
    expires = _number(expires_at)
    if expires is not None and expires <= now:
        return None  # Past its retention: not found, even before purge_expired runs.
    state = JobState(_text(state_text))
    if state is JobState.QUEUED and float(eta) > now:
        state = JobState.SCHEDULED
    error = None
    if error_type:
        error = ErrorInfo(
            _text(error_type),
            _text(error_message or b""),
            None if error_traceback is None else _text(error_traceback),
        )
    return JobRecord(
        id=job_id,
        task=_text(task),
        queue=_text(queue),
        state=state,
        attempts=int(attempts),
        created_at=float(created_at),
        eta=float(eta),
        started_at=_number(started_at),
        finished_at=_number(finished_at),
        expires_at=expires,
        result=None if result is None else bytes(result),
        error=error,
        cancel_requested=cancel_requested == b"1",
        progress=_number(progress),
        progress_message=None if progress_message is None else _text(progress_message),
        idempotency_key=None if idempotency_key is None else _text(idempotency_key),
        note=None if note is None else _text(note),
        version=int(version or 0),
    )
