"""Rate limits whose token buckets live in the store, shared by every process on every host.

A :class:`RateLimiter` admits at most ``rate`` events on average, with bursts
of up to ``burst`` events::

    limiter = RateLimiter("smtp", parse_rate("100/s"), app.backend)
    wait = limiter.try_acquire()    # 0.0: go ahead; otherwise seconds until a token
    granted, wait = limiter.reserve(2.0)  # a token due within 2 s, and the wait for it

The bucket is JSON under the store key ``ratelimit:<name>``. It contains the
tokens left and the time they were counted, and refills continuously at
``rate.count / rate.period`` tokens per second up to ``burst``. A token is
taken with a read-modify-write applied with ``compare_and_set`` and retried
on conflict, so concurrent processes never take the same token. A call
whose update loses ``MAX_UPDATE_ATTEMPTS`` swaps in a row raises
``StoreUnavailable``. A call that takes nothing only reads the store.

Each token falls due when it is taken, or for a token reserved ahead at
the end of its wait. Over any span of ``t`` seconds at most
``burst + (t + TIME_TOLERANCE) * count / period`` tokens fall due, across
all processes. Every process applies its own copy of the rate and burst to the shared
bucket, so declare a limiter with the same options everywhere.

NOTE: times come from each process's clock. A process whose clock is behind
the bucket's last update sees no refill until its clock catches up, and one
whose clock is ahead refills the bucket early by the difference.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from sluicegate._offload import to_thread
from sluicegate._shared_value import MAX_UPDATE_ATTEMPTS, resolve_store, update_value
from sluicegate.errors import ConfigurationError, StoreUnavailable
from sluicegate.store import Store

__all__ = [
    "KEY_PREFIX",
    "MAX_UPDATE_ATTEMPTS",
    "MIN_WAIT",
    "RateLimitSnapshot",
    "RateLimiter",
    "Rate",
    "default_burst",
    "parse_rate",
]

#: Prefix of the store keys of token buckets.
KEY_PREFIX = "ratelimit:"

#: Version of the stored JSON bucket; a reader rejects other versions.
STATE_VERSION = 1

#: Bounds of a rate. A period under a millisecond is finer than the limiter
#: can act on, because every token costs a store round trip, and a limit over
#: more than a day is a quota rather than a rate. ``MAX_PER_SECOND`` is well
#: above the writes per second that one key of these stores takes, so it only
#: catches mistakes such as a wrong unit.
MAX_COUNT = 1_000_000_000
MIN_PERIOD = 0.001
MAX_PERIOD = 86_400.0
MAX_PER_SECOND = 1_000_000.0

#: Shortest wait, in seconds, that ``try_acquire`` returns when it grants nothing.
MIN_WAIT = 0.001

#: A token due within this many seconds counts as due now. Unix times near
#: the present are floats precise to about 0.24 microseconds, so a caller that
#: waits exactly the returned time may otherwise find the token a rounding
#: error short.
TIME_TOLERANCE = 1e-6

# Tolerance, in tokens, for the rounding of ``count / period`` in the default burst.
_TOKEN_EPSILON = 1e-9

_UNIT_SECONDS = {
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86_400.0,
    "day": 86_400.0,
    "days": 86_400.0,
}

# Units that ``Rate.__str__`` writes, largest first.
_CANONICAL_UNITS = (("d", 86_400.0), ("h", 3600.0), ("m", 60.0))

_RATE_PATTERN = re.compile(r"([0-9]+)\s*/\s*([0-9]+(?:\.[0-9]+)?)?\s*([A-Za-z]+)")

_RATE_EXAMPLES = "'100/s', '1000/m', '5/h' or '10/2s'"


@dataclass(frozen=True, slots=True)
class Rate:
    """A rate of ``count`` events per ``period`` seconds.

    ``count`` is between 1 and ``MAX_COUNT``, ``period`` between
    ``MIN_PERIOD`` and ``MAX_PERIOD`` seconds, and ``count / period`` at most
    ``MAX_PER_SECOND``. Raises ``ConfigurationError`` otherwise.
    """

    count: int
    period: float

    def __post_init__(self) -> None:
        count, period = self.count, self.period
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
            raise ConfigurationError(
                f"rate count must be an integer from 1 to {MAX_COUNT}, got {count!r}"
            )
        if (
            isinstance(period, bool)
            or not isinstance(period, int | float)
            or not MIN_PERIOD <= period <= MAX_PERIOD
        ):
            raise ConfigurationError(
                f"rate period must be between {MIN_PERIOD:g} and {MAX_PERIOD:g} seconds, "
                f"got {period!r}"
            )
        if count / period > MAX_PER_SECOND:
            raise ConfigurationError(
                f"rate of {count} per {period:g} seconds is {count / period:,.0f} per second, "
                f"over the maximum of {MAX_PER_SECOND:,.0f} per second"
            )
        object.__setattr__(self, "period", float(period))

    @property
    def per_second(self) -> float:
        """Events per second."""
        return self.count / self.period

    def __str__(self) -> str:
        """Format the rate so that :func:`parse_rate` returns an equal one, e.g. ``10/2s``."""
        for unit, seconds in (*_CANONICAL_UNITS, ("s", 1.0)):
            multiple = self.period / seconds
            if multiple >= 1 and multiple.is_integer():
                return f"{self.count}/{_format_multiple(multiple)}{unit}"
        return f"{self.count}/{self.period!r}s"


def parse_rate(text: str) -> Rate:
    """Parse a rate written ``COUNT/PERIOD``, e.g. ``100/s``, ``1000/m``, ``5/h`` or ``10/2s``.

    ``COUNT`` is a whole number. ``PERIOD`` is a unit, optionally preceded by
    a positive decimal number: ``10/2s`` is 10 per 2 seconds and ``3/1.5m``
    is 3 per 90 seconds. The units are ``ms``, ``s`` (``sec``, ``second``,
    ``seconds``), ``m`` (``min``, ``minute``, ``minutes``), ``h`` (``hr``,
    ``hour``, ``hours``) and ``d`` (``day``, ``days``), in lower case only.
    Spaces around the ``/`` and before the unit are allowed.

    Raises ``ConfigurationError`` naming ``text`` when it does not parse or
    the rate is out of the bounds of :class:`Rate`.
    """
    if not isinstance(text, str):
        raise ConfigurationError(
            f"rate must be a string such as {_RATE_EXAMPLES}, got {_quote(text)}"
        )
    match = _RATE_PATTERN.fullmatch(text.strip())
    if match is None:
        raise ConfigurationError(
            f"invalid rate {_quote(text)}: expected COUNT/PERIOD such as {_RATE_EXAMPLES}"
        )
    count_text, multiple_text, unit = match.groups()
    if len(count_text) > len(str(MAX_COUNT)) + 5:  # int() rejects very long digit strings
        raise ConfigurationError(
            f"invalid rate {_quote(text)}: the count must be an integer from 1 to {MAX_COUNT}"
        )
    seconds = _UNIT_SECONDS.get(unit)
    if seconds is None:
        units = ", ".join(sorted(_UNIT_SECONDS, key=_UNIT_SECONDS.__getitem__))
        raise ConfigurationError(
            f"invalid rate {_quote(text)}: unknown unit {unit!r}; use one of {units}"
        )
    multiple = 1.0 if multiple_text is None else float(multiple_text)
    try:
        return Rate(int(count_text), multiple * seconds)
    except ConfigurationError as exc:
        raise ConfigurationError(f"invalid rate {_quote(text)}: {exc}") from None


def default_burst(rate: Rate) -> int:
    """Return the burst used when none is given: one second's worth of tokens.

    That is ``count / period`` rounded down, at least 1 and at most
    ``count``: 100 for ``100/s``, 16 for ``1000/m``, 1 for ``5/h`` and 5 for
    ``10/2s``.
    """
    return max(1, min(rate.count, math.floor(rate.per_second + _TOKEN_EPSILON)))


@dataclass(frozen=True, slots=True)
class RateLimitSnapshot:
    """The bucket of a rate limiter at one moment, as read from the store.

    ``tokens`` includes the refill up to the moment of reading, and is
    negative while tokens reserved ahead by :meth:`RateLimiter.reserve` are
    not due yet. ``updated_at`` is the Unix time of the last granted token,
    or None when no token was ever granted from this bucket.
    """

    name: str
    tokens: float
    rate: Rate
    burst: int
    updated_at: float | None


class RateLimiter:
    """A token bucket named ``name`` that every process sharing ``store`` draws from.

    Parameters:
      name: the limiter's name, unique per limited resource.
      rate: the average rate, a :class:`Rate` or text for :func:`parse_rate`.
      store: the store, or a function returning it (``App`` passes its backend
        property, which reopens the connection after a fork).
      burst: the bucket's capacity in tokens, an integer of at least 1.
        Defaults to :func:`default_burst`, one second's worth of tokens.
      clock: returns the current Unix time in seconds.

    A new bucket starts full. Raises ``ConfigurationError`` for an invalid option.
    """

    def __init__(
        self,
        name: str,
        rate: Rate | str,
        store: Store | Callable[[], Store],
        burst: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(name, str) or not name or len(name) > 200:
            raise ConfigurationError(
                f"rate limiter name must be a non-empty string of at most 200 characters, "
                f"got {_quote(name)}"
            )
        if isinstance(rate, str):
            rate = parse_rate(rate)
        elif not isinstance(rate, Rate):
            raise ConfigurationError(
                f"rate must be a Rate or a string such as {_RATE_EXAMPLES}, got {rate!r}"
            )
        if burst is None:
            burst = default_burst(rate)
        elif isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst <= MAX_COUNT:
            raise ConfigurationError(
                f"burst must be an integer from 1 to {MAX_COUNT} tokens, got {burst!r}"
            )
        self.name = name
        self.rate = rate
        self.burst = burst
        self.key = KEY_PREFIX + name
        self._store = store
        self._clock = clock

    def __repr__(self) -> str:
        return f"RateLimiter({self.name!r}, {str(self.rate)!r}, burst={self.burst})"

    def try_acquire(self) -> float:
        """Take one token and return 0.0, or take none and return the seconds until one is due.

        The wait is at least ``MIN_WAIT``. It is the time until the bucket
        refills to one token, so a caller that waits that long may still
        find the token taken by another process.
        Raises ``StoreUnavailable`` when the update keeps losing to other processes.
        """
        granted, wait = self.reserve(0.0)
        return 0.0 if granted else wait

    async def atry_acquire(self) -> float:
        """Run :meth:`try_acquire` in a thread, so the event loop is never blocked."""
        return await to_thread(self.try_acquire)

    def reserve(self, max_wait: float, take_turn: bool = False) -> tuple[bool, float]:
        """Take the next token if it is due within ``max_wait`` seconds.

        Returns ``(True, wait)`` when the token is taken: the caller may act
        ``wait`` seconds from now (0.0 when a token was free), and a token
        that is not free yet leaves the bucket in debt until then. Returns
        ``(False, wait)`` when nothing was taken: in ``wait`` seconds (at least
        ``MIN_WAIT``) the next token will be due within ``max_wait``.

        With ``take_turn``, a caller turned away is given a turn instead: the
        first one the moment above, each later one a token interval after the
        previous turn, so a backlog of callers that come back at their turns
        arrives at the rate. That writes the store on every call.
        ``reserve(0.0)`` is :meth:`try_acquire`. Raises ``ValueError`` for a
        negative or non-finite ``max_wait``, and ``StoreUnavailable`` when
        the update keeps losing to other processes.
        """
        if (
            isinstance(max_wait, bool)
            or not isinstance(max_wait, int | float)
            or not 0 <= max_wait < math.inf
        ):
            raise ValueError(f"max_wait must be a finite number of seconds >= 0, got {max_wait!r}")
        now = self._clock()
        return update_value(
            resolve_store(self._store),
            self.key,
            lambda raw: self._take(raw, now, float(max_wait), take_turn),
            repr(self),
        )

    async def areserve(self, max_wait: float) -> tuple[bool, float]:
        """Run :meth:`reserve` in a thread, so the event loop is never blocked."""
        return await to_thread(self.reserve, max_wait)

    def state(self) -> RateLimitSnapshot:
        """Return the bucket as read from the store now, refilled up to now."""
        now = self._clock()
        stored = self._decode(resolve_store(self._store).get_value(self.key))
        if stored is None:
            return RateLimitSnapshot(self.name, float(self.burst), self.rate, self.burst, None)
        tokens = self._refill(stored[:2], now)[0]
        return RateLimitSnapshot(self.name, tokens, self.rate, self.burst, stored[1])

    def _take(
        self, raw: bytes | None, now: float, max_wait: float, take_turn: bool = False
    ) -> tuple[bytes | None, tuple[bool, float]]:
        stored = self._decode(raw)
        if stored is None:
            tokens, updated_at, deferred_until = float(self.burst), now, now
        else:
            tokens, updated_at = self._refill(stored[:2], now)
            deferred_until = self._deferred_until(stored[2], now)
        new_state: dict[str, float | int] = {"version": STATE_VERSION, "updated_at": updated_at}
        if deferred_until > now:
            new_state["deferred_until"] = deferred_until
        if tokens >= 1 - TIME_TOLERANCE * self.rate.per_second:
            wait = 0.0
        else:
            # The bucket refills from ``updated_at``, which is later than
            # ``now`` when this clock is behind the last writer's.
            wait = updated_at + (1 - tokens) / self.rate.per_second - now
            if wait > max_wait and not take_turn:
                return raw, (False, max(MIN_WAIT, wait - max_wait))
            if wait > max_wait:
                # Callers turned away are given turns one token apart, from the
                # moment the next token is due within max_wait, so a backlog of
                # them comes back at the rate instead of all at once.
                turn = max(now + wait - max_wait, deferred_until)
                new_state.update(tokens=tokens, deferred_until=turn + 1 / self.rate.per_second)
                return orjson.dumps(new_state), (False, max(MIN_WAIT, turn - now))
        new_state["tokens"] = tokens - 1
        return orjson.dumps(new_state), (True, max(0.0, wait))

    def _deferred_until(self, stored: float | None, now: float) -> float:
        """Return the turn after the last caller turned away, or ``now`` when there is none."""
        # A turn further ahead than a day's worth of tokens is not one this limiter gave.
        horizon = now + max(MAX_PERIOD, self.rate.count * self.rate.period)
        if stored is None or not now < stored <= horizon:
            return now
        return stored

    def _refill(self, stored: tuple[float, float], now: float) -> tuple[float, float]:
        """Return the tokens at ``max(now, updated_at)`` and that time.

        A clock behind the stored time adds nothing, so no process can take
        tokens twice by reading an older time.
        """
        tokens, updated_at = stored
        if now <= updated_at:
            return min(tokens, float(self.burst)), updated_at
        refilled = tokens + (now - updated_at) * self.rate.per_second
        return min(refilled, float(self.burst)), now

    def _decode(self, raw: bytes | None) -> tuple[float, float, float | None] | None:
        """Return the stored tokens, update time and next turn (None if absent), or None."""
        if raw is None:
            return None
        try:
            data = orjson.loads(raw)
            if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
                raise ValueError(f"expected version {STATE_VERSION}, got {raw[:100]!r}")
            tokens, updated_at = data["tokens"], data["updated_at"]
            if not all(_is_finite(value) for value in (tokens, updated_at)):
                raise ValueError(f"invalid tokens or time in {raw[:100]!r}")
            if tokens < -self.rate.per_second * MAX_PERIOD:
                raise ValueError(f"a debt of more than a day's tokens in {raw[:100]!r}")
            turn = data.get("deferred_until")
            next_turn = float(turn) if isinstance(turn, int | float) and _is_finite(turn) else None
            return float(tokens), float(updated_at), next_turn
        except (ValueError, KeyError) as exc:
            raise StoreUnavailable(
                f"rate limiter {self.name!r}: cannot read the bucket under {self.key!r} "
                f"({exc}); delete that key to start a full bucket"
            ) from exc


def _format_multiple(multiple: float) -> str:
    """Format a whole multiple of a unit, leaving out a multiple of 1 (``5/h``, ``10/2s``)."""
    return "" if multiple == 1 else str(int(multiple))


def _is_finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _quote(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 100 else text[:100] + "..."
