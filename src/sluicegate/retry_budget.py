"""Retry budgets: a cap on a queue's retries relative to its first attempts, across all workers.

A failing dependency makes every job fail, and retrying each of them
multiplies the load on it just when it can take least. A :class:`RetryBudget`
lets retries run at their normal backoff only while they are a small share
of the queue's traffic, and postpones the rest::

    budget = RetryBudget("mail", app.backend)
    budget.note_first_attempt()          # for every job that starts its first attempt
    delay = budget.admit_retry(backoff)  # before scheduling a retry: the delay to use

The rule, over a sliding ``window`` (default 60 s):

- First attempts and retries are counted in buckets of ``window / 10``
  seconds. A first attempt counts in the bucket of the time it was noted, a
  retry in the bucket of the time it will run. A window is ten consecutive
  buckets.
- The allowance is ``max(min_retries, floor(ratio * F))``, where ``F`` is the
  number of first attempts counted in the current bucket and the nine before
  it (so between 0.9 and 1.0 times ``window``).
- A retry fits in a bucket when every window that includes that bucket has
  fewer retries than the allowance.
- :meth:`RetryBudget.admit_retry` with ``delay`` admits the retry at its
  normal time ``now + delay`` when it fits in that time's bucket. It counts
  the retry there and returns ``delay``.
- Otherwise it finds the earliest later bucket in which a retry fits, which
  is the first one whose windows have lost enough of the counted retries.
  So that the retries of a fleet do not run in one burst, it picks a
  random bucket among those that fit in the ten buckets (one window)
  starting there, and a random time within that bucket. It counts the retry
  in that bucket and returns the seconds until that time, which are more
  than ``delay``.

So no window ever contains more retries than the allowance in force when they
were admitted. The allowance of a postponed retry uses the first attempts
of the current window, which is an estimate of the traffic at the time it
will run.

First attempts are counted in memory, because a worker notes one for every
job it starts, and reach the store when :meth:`RetryBudget.flush` or
:meth:`RetryBudget.admit_retry` runs. Until then the other processes do not
see them. A worker calls ``flush()`` about once a second and on shutdown.

The state is JSON under the store key ``retry_budget:<queue>``. Every change
is a read-modify-write applied with ``compare_and_set`` and retried on
conflict, and a call whose update loses ``MAX_UPDATE_ATTEMPTS`` swaps in a
row raises ``StoreUnavailable``. Every process applies its own copy of the
options to the shared counts, so declare a budget with the same options
everywhere.

NOTE: the state keeps one bucket per ``window / 10`` seconds of future
schedule, so a queue whose retries are postponed by many windows stores
that many buckets and rewrites them at every retry. Times come from each
process's clock, so hosts whose clocks differ by more than a bucket count
into different buckets.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from sluicegate._offload import to_thread
from sluicegate._shared_value import MAX_UPDATE_ATTEMPTS, resolve_store, update_value
from sluicegate.breaker_state import MAX_DURATION, MIN_DURATION
from sluicegate.errors import ConfigurationError, StoreUnavailable
from sluicegate.store import Store

__all__ = [
    "BUCKETS_PER_WINDOW",
    "FLUSH_INTERVAL",
    "KEY_PREFIX",
    "MAX_UPDATE_ATTEMPTS",
    "RetryBudget",
    "RetryBudgetPolicy",
    "RetryBudgetSnapshot",
    "make_budget_policy",
]

logger = logging.getLogger(__name__)

#: Prefix of the store keys of retry budgets.
KEY_PREFIX = "retry_budget:"

#: Number of buckets in one window; a bucket is ``window / 10`` seconds wide.
BUCKETS_PER_WINDOW = 10

#: Version of the stored JSON state; a reader rejects other versions.
STATE_VERSION = 1

#: Interval, in seconds, at which a worker should call :meth:`RetryBudget.flush`.
FLUSH_INTERVAL = 1.0

#: Bounds of ``ratio`` and ``min_retries``. A ratio above 100 retries per
#: first attempt is more likely a mistake than a plan.
MAX_RATIO = 100.0
MAX_MIN_RETRIES = 1_000_000

# Tolerance for the rounding of ``ratio * first attempts``, e.g. 0.1 * 30.
_ALLOWANCE_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class RetryBudgetPolicy:
    """The options of one retry budget, validated by :func:`make_budget_policy`.

    Parameters:
      ratio: retries allowed per first attempt in the window.
      window: length of the sliding window, in seconds.
      min_retries: retries allowed per window whatever the first attempts.
    """

    ratio: float
    window: float
    min_retries: int

    @property
    def bucket_width(self) -> float:
        """Width of one counting bucket, in seconds."""
        return self.window / BUCKETS_PER_WINDOW

    def bucket_index(self, when: float) -> int:
        """Return the index of the bucket that contains Unix time ``when``."""
        return math.floor(when / self.bucket_width)

    def allowance(self, first_attempts: int) -> int:
        """Return the retries allowed in a window that counts ``first_attempts``."""
        share = math.floor(self.ratio * first_attempts + _ALLOWANCE_EPSILON)
        return max(self.min_retries, share)


def make_budget_policy(
    ratio: float = 0.2, window: float = 60.0, min_retries: int = 10
) -> RetryBudgetPolicy:
    """Validate retry budget options; raise ``ConfigurationError`` naming the invalid value."""
    if not (_is_number(ratio) and 0 <= ratio <= MAX_RATIO):
        raise ConfigurationError(
            f"ratio must be a number of retries per first attempt from 0 to {MAX_RATIO:g}, "
            f"got {ratio!r}"
        )
    if not (_is_number(window) and MIN_DURATION <= window <= MAX_DURATION):
        raise ConfigurationError(
            f"window must be between {MIN_DURATION:g} and {MAX_DURATION:g} seconds, got {window!r}"
        )
    if (
        isinstance(min_retries, bool)
        or not isinstance(min_retries, int)
        or not 1 <= min_retries <= MAX_MIN_RETRIES
    ):
        raise ConfigurationError(
            f"min_retries must be an integer from 1 to {MAX_MIN_RETRIES}, got {min_retries!r}"
        )
    return RetryBudgetPolicy(ratio=float(ratio), window=float(window), min_retries=min_retries)


@dataclass(frozen=True, slots=True)
class RetryBudgetSnapshot:
    """The counts of a retry budget at one moment, as read from the store.

    ``first_attempts`` and ``retries`` are counted in the window that ends
    now, and ``retries_scheduled`` in the buckets after the current one.
    ``exhausted`` is true when a retry with no delay would be postponed.
    First attempts that a process has noted but not flushed yet are missing.
    """

    queue: str
    ratio: float
    window: float
    min_retries: int
    first_attempts: int
    retries: int
    retries_scheduled: int
    allowance: int
    exhausted: bool


# A bucket's counts: (first attempts, retries).
_Counts = tuple[int, int]


@dataclass(frozen=True, slots=True)
class _Decision:
    """The outcome of one admission.

    ``retries`` is the count of the busiest window that contains the
    requested run time, before this retry.
    """

    admitted: bool
    run_at: float
    retries: int
    allowance: int
    first_attempts: int


class RetryBudget:
    """The retry budget of queue ``queue``, its counts kept in ``store``.

    Parameters:
      queue: the queue whose retries are limited.
      store: the store, or a function returning it (``App`` passes its backend
        property, which reopens the connection after a fork).
      ratio: retries allowed per first attempt in the window (default 0.2).
      window: length of the sliding window, in seconds (default 60).
      min_retries: retries allowed per window however few first attempts
        there were, at least 1 (default 10).
      clock: returns the current Unix time in seconds.

    Every method is safe to call from several threads at once. Raises
    ``ConfigurationError`` for an invalid option.
    """

    def __init__(
        self,
        queue: str,
        store: Store | Callable[[], Store],
        ratio: float = 0.2,
        window: float = 60.0,
        min_retries: int = 10,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(queue, str) or not queue or len(queue) > 200:
            raise ConfigurationError(
                f"retry budget queue must be a non-empty string of at most 200 characters, "
                f"got {queue!r}"
            )
        self.queue = queue
        self.policy = make_budget_policy(ratio, window, min_retries)
        self.key = KEY_PREFIX + queue
        self._store = store
        self._clock = clock
        self._lock = threading.Lock()
        # First attempts not yet written to the store, by bucket index.
        self._pending: dict[int, int] = {}
        self._deferring = False

    def __repr__(self) -> str:
        return f"RetryBudget({self.queue!r})"

    # -- counting

    def note_first_attempt(self, count: int = 1) -> None:
        """Count ``count`` first attempts now, in memory, for :meth:`flush` to write.

        It never touches the store, so an event loop may call it directly.
        """
        if count < 0:
            raise ValueError(f"count must be at least 0, got {count!r}")
        index = self.policy.bucket_index(self._clock())
        with self._lock:
            self._pending[index] = self._pending.get(index, 0) + count

    def flush(self) -> int:
        """Write the first attempts counted in memory to the store; return how many.

        Each call with counts to write costs one store update, so a worker
        calls it about once a second (``FLUSH_INTERVAL``) and on shutdown.
        Counts that fail to reach the store stay in memory for the next flush.
        Raises ``StoreUnavailable`` when the update keeps losing to other processes.
        """
        now = self._clock()
        with self._lock:
            if not self._pending:
                return 0
            pending, self._pending = self._pending, {}
        try:
            update_value(
                resolve_store(self._store),
                self.key,
                lambda raw: (self._encode(self._merged(raw, pending, now)), None),
                repr(self),
            )
        except BaseException:
            self._restore_pending(pending)
            raise
        return sum(pending.values())

    async def aflush(self) -> int:
        """Run :meth:`flush` in a thread, so the event loop is never blocked."""
        return await to_thread(self.flush)

    def admit_retry(self, delay: float) -> float:
        """Count a retry requested ``delay`` seconds from now; return the delay to schedule it with.

        It first writes the first attempts counted in memory. It returns
        ``delay`` when the retry fits the budget, and a longer delay when it
        does not, as the module documentation describes. Raises
        ``ValueError`` for a negative or non-finite ``delay``, and
        ``StoreUnavailable`` when the update keeps losing to other processes.
        """
        if (
            isinstance(delay, bool)
            or not isinstance(delay, int | float)
            or not 0 <= delay < math.inf
        ):
            raise ValueError(f"delay must be a finite number of seconds >= 0, got {delay!r}")
        now = self._clock()
        with self._lock:
            pending, self._pending = self._pending, {}
        try:
            decision = update_value(
                resolve_store(self._store),
                self.key,
                lambda raw: self._admission_step(raw, pending, now, float(delay)),
                repr(self),
            )
        except BaseException:
            self._restore_pending(pending)
            raise
        self._log_decision(decision, now)
        if decision.admitted:
            return float(delay)
        return max(float(delay), decision.run_at - now)

    async def aadmit_retry(self, delay: float) -> float:
        """Run :meth:`admit_retry` in a thread, so the event loop is never blocked."""
        return await to_thread(self.admit_retry, delay)

    # -- inspecting

    def state(self) -> RetryBudgetSnapshot:
        """Return the counts as read from the store now, without the unflushed first attempts."""
        now = self._clock()
        current = self.policy.bucket_index(now)
        buckets = self._live(self._decode(resolve_store(self._store).get_value(self.key)), now)
        first_attempts = sum(first for first, _ in buckets.values())
        retries = sum(counts[1] for index, counts in buckets.items() if index <= current)
        scheduled = sum(counts[1] for index, counts in buckets.items() if index > current)
        allowance = self.policy.allowance(first_attempts)
        by_index = {index: counts[1] for index, counts in buckets.items()}
        return RetryBudgetSnapshot(
            queue=self.queue,
            ratio=self.policy.ratio,
            window=self.policy.window,
            min_retries=self.policy.min_retries,
            first_attempts=first_attempts,
            retries=retries,
            retries_scheduled=scheduled,
            allowance=allowance,
            exhausted=_busiest_window(by_index, current) + 1 > allowance,
        )

    # -- the budget rule

    def _admission_step(
        self, raw: bytes | None, pending: dict[int, int], now: float, delay: float
    ) -> tuple[bytes, _Decision]:
        buckets = self._merged(raw, pending, now)
        first_attempts = sum(first for first, _ in buckets.values())
        allowance = self.policy.allowance(first_attempts)
        retries = {index: counts[1] for index, counts in buckets.items() if counts[1]}
        requested_at = now + delay
        requested_index = self.policy.bucket_index(requested_at)
        busiest = _busiest_window(retries, requested_index)
        if busiest + 1 <= allowance:
            admitted, run_at = True, requested_at
        else:
            admitted = False
            run_at = self._postponed_run(retries, requested_index, allowance)
        index = self.policy.bucket_index(run_at)
        first, booked = buckets.get(index, (0, 0))
        buckets[index] = (first, booked + 1)
        decision = _Decision(admitted, run_at, busiest, allowance, first_attempts)
        return self._encode(buckets), decision

    def _postponed_run(
        self, retries: dict[int, int], requested_index: int, allowance: int
    ) -> float:
        """Return a random time in a bucket after ``requested_index`` where a retry fits.

        A window frees a place only when a bucket with retries leaves it, so
        the earliest bucket where a retry fits is one that comes ten buckets
        after a bucket with retries. The bucket is drawn uniformly from the
        fitting ones among that earliest one and the nine after it.
        """
        candidates = sorted(
            index + BUCKETS_PER_WINDOW
            for index in retries
            if index + BUCKETS_PER_WINDOW > requested_index
        )
        # The last candidate always fits: every window that contains it starts
        # after the last bucket with retries.
        earliest = next(
            index for index in candidates if _busiest_window(retries, index) + 1 <= allowance
        )
        fitting = [
            index
            for index in range(earliest, earliest + BUCKETS_PER_WINDOW)
            if _busiest_window(retries, index) + 1 <= allowance
        ]
        return self._random_time_in(random.choice(fitting))

    def _random_time_in(self, index: int) -> float:
        """Return a time drawn uniformly from bucket ``index``."""
        start = index * self.policy.bucket_width
        # The product may round to just outside the bucket.
        while self.policy.bucket_index(start) < index:
            start = math.nextafter(start, math.inf)
        when = start + random.uniform(0, self.policy.bucket_width)
        return when if self.policy.bucket_index(when) == index else start

    # -- the stored state

    def _merged(self, raw: bytes | None, pending: dict[int, int], now: float) -> dict[int, _Counts]:
        """Return the live buckets of ``raw`` with the ``pending`` first attempts added."""
        buckets = self._live(self._decode(raw), now)
        oldest = self.policy.bucket_index(now) - BUCKETS_PER_WINDOW + 1
        for index, count in pending.items():
            if index >= oldest and count:
                first, retries = buckets.get(index, (0, 0))
                buckets[index] = (first + count, retries)
        return buckets

    def _live(self, buckets: dict[int, _Counts], now: float) -> dict[int, _Counts]:
        """Drop the buckets that have left the window that ends at ``now``."""
        oldest = self.policy.bucket_index(now) - BUCKETS_PER_WINDOW + 1
        return {index: counts for index, counts in buckets.items() if index >= oldest}

    def _encode(self, buckets: dict[int, _Counts]) -> bytes:
        rows = [[index, first, retries] for index, (first, retries) in sorted(buckets.items())]
        return orjson.dumps({"version": STATE_VERSION, "buckets": rows})

    def _decode(self, raw: bytes | None) -> dict[int, _Counts]:
        if raw is None:
            return {}
        try:
            data = orjson.loads(raw)
            if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
                raise ValueError(f"expected version {STATE_VERSION}, got {raw[:100]!r}")
            buckets: dict[int, _Counts] = {}
            for row in data["buckets"]:
                if not (
                    isinstance(row, list)
                    and len(row) == 3
                    and all(isinstance(value, int) for value in row)
                    and row[1] >= 0
                    and row[2] >= 0
                ):
                    raise ValueError(f"invalid bucket {row!r}")
                buckets[row[0]] = (row[1], row[2])
            return buckets
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreUnavailable(
                f"retry budget {self.queue!r}: cannot read the counts under {self.key!r} "
                f"({exc}); delete that key to start counting anew"
            ) from exc

    def _restore_pending(self, pending: dict[int, int]) -> None:
        with self._lock:
            for index, count in pending.items():
                self._pending[index] = self._pending.get(index, 0) + count

    def _log_decision(self, decision: _Decision, now: float) -> None:
        with self._lock:
            was_deferring = self._deferring
            self._deferring = not decision.admitted
        if was_deferring != decision.admitted:
            return  # No change: still admitting, or still postponing.
        if decision.admitted:
            logger.info(
                "retry budget available again queue=%s retries=%d allowance=%d first_attempts=%d",
                self.queue,
                decision.retries,
                decision.allowance,
                decision.first_attempts,
            )
        else:
            logger.warning(
                "retry budget exhausted, postponing retries queue=%s retries=%d allowance=%d "
                "first_attempts=%d window_s=%g postponed_s=%.3f",
                self.queue,
                decision.retries,
                decision.allowance,
                decision.first_attempts,
                self.policy.window,
                decision.run_at - now,
            )


def _busiest_window(retries: dict[int, int], index: int) -> int:
    """Return the most retries in one of the ten windows that contain bucket ``index``.

    ``retries`` maps bucket indexes to retry counts. A window is ten
    consecutive buckets.
    """
    counts = [
        retries.get(i, 0) for i in range(index - BUCKETS_PER_WINDOW + 1, index + BUCKETS_PER_WINDOW)
    ]
    window = sum(counts[:BUCKETS_PER_WINDOW])
    busiest = window
    for added in range(BUCKETS_PER_WINDOW, len(counts)):
        window += counts[added] - counts[added - BUCKETS_PER_WINDOW]
        busiest = max(busiest, window)
    return busiest


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
