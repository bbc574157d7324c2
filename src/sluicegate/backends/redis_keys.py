"""Key layout of the Redis backend: every key and channel it uses, in one place.

Every key starts with the hash tag ``{PREFIX}`` (``{sluicegate}`` by
default), so all keys of one prefix hash to one Redis Cluster slot and each
Lua script may touch any of them. A cluster therefore gives a prefix
failover but not sharding; to spread load over shards, give separate apps
separate prefixes. The Lua scripts in :mod:`sluicegate.backends.redis_scripts`
build the same names from the prefix; keep both in step.

====================================  ======  ==============================================
key                                   type    contents
====================================  ======  ==============================================
``{P}:queues``                        set     names of every queue that was ever admitted to
``{P}:q:QUEUE:meta``                  hash    ``max_length``, ``max_wait`` and the rate
                                              counters ``bucket``, ``enqueued_now``,
                                              ``enqueued_before``, ``completed_now``,
                                              ``completed_before``
``{P}:q:QUEUE:levels``                zset    priorities that have ready messages, scored by
                                              the negated priority (highest first)
``{P}:q:QUEUE:ready:PRIORITY``        zset    ready message ids, scored by the time each
                                              became ready (FIFO; equal times sort by id,
                                              and ids are time-ordered UUIDv7s)
``{P}:q:QUEUE:delayed``               zset    delayed message ids, scored by ready time
``{P}:q:QUEUE:leased``                zset    reserved message ids, scored by lease expiry
``{P}:q:QUEUE:dead``                  zset    dead-lettered message ids, scored by the time
``{P}:m:ID``                          hash    a message: ``queue``, ``body``, ``priority``,
                                              ``order_at``, ``enqueued_at``, ``fence``,
                                              ``deliveries``, ``worker``, and ``reason`` with
                                              ``dead_at`` once dead-lettered
``{P}:j:ID``                          hash    a job record; see :data:`JOB_FIELDS`. A final
                                              record gets a Redis expiry (its retention)
``{P}:expiring``                      zset    ids of final job records, scored by
                                              ``expires_at``, for ``purge_expired``
``{P}:idem:KEY``                      string  the job id holding idempotency key KEY; it
                                              expires with that job's record
``{P}:lock:NAME``                     hash    ``holder`` and ``expires_at`` of a named lock
``{P}:kv:KEY``                        string  a compare-and-set value
``{P}:kv-index``                      zset    every KEY of a ``{P}:kv:KEY``, all scored 0,
                                              so ``keys(prefix)`` is one ZRANGEBYLEX
``{P}:reply:TOKEN``                   string  the packed reply of one ``exchange`` call, kept
                                              for a minute so a call retried after a lost
                                              reply returns the same deliveries
====================================  ======  ==============================================

Pub/sub channels (not keys): ``{P}:wake`` carries a queue name each time
messages become ready now, and ``{P}:results`` a job id each time a job
reaches a final state.

A message and its job share one id. Times are Unix seconds, written as
Python's ``repr`` of a float, so they read back exactly.
"""

from __future__ import annotations

from sluicegate.errors import ConfigurationError

#: Key prefix used when neither the URL nor the caller names one.
DEFAULT_PREFIX = "sluicegate"

#: Fields of a job record hash, in the order ``JobRecord`` reads them.
JOB_FIELDS = (
    "task",
    "queue",
    "state",
    "attempts",
    "created_at",
    "eta",
    "started_at",
    "finished_at",
    "expires_at",
    "result",
    "error_type",
    "error_message",
    "error_traceback",
    "cancel_requested",
    "progress",
    "progress_message",
    "idempotency_key",
    "note",
    "version",
)


class Keys:
    """Key and channel names for one prefix."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ConfigurationError(
                f"Redis key prefix must be non-empty and free of braces, got {prefix!r}"
            )
        self.prefix = prefix
        #: The hash tag every key starts with; the scripts receive it as ARGV[1].
        self.tag = "{" + prefix + "}"
        self.queues = f"{self.tag}:queues"
        self.expiring = f"{self.tag}:expiring"
        self.kv_index = f"{self.tag}:kv-index"
        self.wake_channel = f"{self.tag}:wake"
        self.results_channel = f"{self.tag}:results"

    def job(self, job_id: str) -> str:
        return f"{self.tag}:j:{job_id}"

    def message(self, message_id: str) -> str:
        return f"{self.tag}:m:{message_id}"

    def lock(self, name: str) -> str:
        return f"{self.tag}:lock:{name}"

    def value(self, key: str) -> str:
        return f"{self.tag}:kv:{key}"

    def pattern(self) -> str:
        """Return the SCAN pattern matching every key of this prefix."""
        escaped = "".join("\\" + c if c in "*?[]\\" else c for c in self.tag)
        return f"{escaped}:*"
