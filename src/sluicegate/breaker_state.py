"""The circuit breaker state machine: pure functions of a policy, a state and a time.

Nothing here reads a clock or a store. :mod:`sluicegate.breaker` does that
and applies these functions inside a compare-and-set loop. All times are
Unix seconds and all durations are seconds.

States:

- ``closed``: every call runs and its outcome is counted.
- ``open``: no call runs until ``retry_at``.
- ``half_open``: up to ``half_open_calls`` probe calls run. When all of them
  succeed the breaker closes. The first probe failure opens it again with
  the reset timeout doubled, up to ``max_reset_timeout``.

Outcomes are counted in buckets of ``window / BUCKETS_PER_WINDOW`` seconds.
The failure rate covers the current bucket and the ones before it, so the
span counted is between 0.9 and 1.0 times ``window``.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass
from typing import Literal

import orjson

from sluicegate.errors import ConfigurationError

#: Number of buckets in one window; a bucket is ``window / 10`` seconds wide.
BUCKETS_PER_WINDOW = 10

#: Version of the stored JSON state; a reader rejects other versions.
STATE_VERSION = 1

Mode = Literal["rate", "consecutive"]


class Phase(enum.StrEnum):
    """The state of a breaker."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Outcome(enum.Enum):
    """The result of a guarded call, as the breaker counts it."""

    SUCCESS = "success"
    FAILURE = "failure"
    IGNORED = "ignored"  # An exception outside ``failure_types``: neither success nor failure.


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """The options of one breaker, validated by :func:`make_policy`.

    Parameters:
      failure_threshold: in ``"rate"`` mode the failure rate (0 < rate <= 1)
        that opens the breaker; in ``"consecutive"`` mode the number of
        consecutive failures that opens it.
      minimum_calls: calls in the window below which the rate mode never opens.
      window: length of the sliding window, in seconds.
      reset_timeout: seconds the breaker stays open after it first opens.
      half_open_calls: probes admitted in half-open state, all of which must
        succeed to close the breaker.
      mode: ``"rate"`` or ``"consecutive"``.
      max_reset_timeout: cap, in seconds, on the doubled reset timeout.
    """

    failure_threshold: float
    minimum_calls: int
    window: float
    reset_timeout: float
    half_open_calls: int
    mode: Mode
    max_reset_timeout: float

    @property
    def bucket_width(self) -> float:
        """Width of one counting bucket, in seconds."""
        return self.window / BUCKETS_PER_WINDOW


@dataclass(frozen=True, slots=True)
class BreakerState:
    """The stored state of one breaker, which every process reads and writes.

    ``buckets`` contains ``(bucket index, successes, failures)`` for the buckets
    of the current window, where the index is ``floor(time / bucket_width)``.
    ``generation`` grows by one every time the breaker opens, so the outcome
    of a probe admitted in an earlier half-open round is not counted.
    ``half_open_since`` starts a probe round. A round whose probes are all
    admitted but have not all reported within the reset timeout is restarted,
    because the process that ran a probe may have died before reporting it.
    ``opened_count``, ``half_opened_count`` and ``closed_count`` count the
    changes of ``phase`` into each state since the state was first stored.
    They survive a reset, so they work as fleet-wide Prometheus counters.
    """

    phase: Phase = Phase.CLOSED
    buckets: tuple[tuple[int, int, int], ...] = ()
    consecutive_failures: int = 0
    generation: int = 0
    opened_at: float | None = None
    retry_at: float | None = None
    reset_timeout: float | None = None
    half_open_since: float | None = None
    probes_admitted: int = 0
    probe_successes: int = 0
    opened_count: int = 0
    half_opened_count: int = 0
    closed_count: int = 0

    def encode(self) -> bytes:
        """Serialize the state to JSON with its version."""
        return orjson.dumps(
            {
                "version": STATE_VERSION,
                "phase": self.phase.value,
                "buckets": [list(bucket) for bucket in self.buckets],
                "consecutive_failures": self.consecutive_failures,
                "generation": self.generation,
                "opened_at": self.opened_at,
                "retry_at": self.retry_at,
                "reset_timeout": self.reset_timeout,
                "half_open_since": self.half_open_since,
                "probes_admitted": self.probes_admitted,
                "probe_successes": self.probe_successes,
                "opened_count": self.opened_count,
                "half_opened_count": self.half_opened_count,
                "closed_count": self.closed_count,
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> BreakerState:
        """Parse stored JSON; raise ``ValueError`` on another version or a malformed value.

        A state stored before the transition counts existed reads with counts of 0.
        """
        data = orjson.loads(raw)
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            version = data.get("version") if isinstance(data, dict) else None
            raise ValueError(
                f"breaker state has version {version!r}; this sluicegate reads {STATE_VERSION}"
            )
        phase = Phase(data["phase"])
        retry_at = _optional_number(data, "retry_at", MAX_TIME)
        reset_timeout = _optional_number(data, "reset_timeout", MAX_DURATION)
        if phase is not Phase.CLOSED and (retry_at is None or reset_timeout is None):
            raise ValueError(f"an {phase.value} breaker state needs retry_at and reset_timeout")
        return cls(
            phase=phase,
            buckets=tuple((int(i), int(s), int(f)) for i, s, f in data["buckets"]),
            consecutive_failures=int(data["consecutive_failures"]),
            generation=int(data["generation"]),
            opened_at=_optional_number(data, "opened_at", MAX_TIME),
            retry_at=retry_at,
            reset_timeout=reset_timeout,
            half_open_since=_optional_number(data, "half_open_since", MAX_TIME),
            probes_admitted=int(data["probes_admitted"]),
            probe_successes=int(data["probe_successes"]),
            opened_count=int(data.get("opened_count", 0)),
            half_opened_count=int(data.get("half_opened_count", 0)),
            closed_count=int(data.get("closed_count", 0)),
        )


@dataclass(frozen=True, slots=True)
class Ticket:
    """A call admitted by :func:`admit`; hand it back to :func:`record` with the outcome."""

    probe: bool
    generation: int


@dataclass(frozen=True, slots=True)
class Admission:
    """The result of :func:`admit`: the new state and either a ticket or a retry time."""

    state: BreakerState
    ticket: Ticket | None
    retry_at: float | None = None


#: Bounds, in seconds, on a breaker's window, timeouts and forced-open durations.
#: A window under 10 ms leaves no room for its buckets; past a year a time is
#: more likely a unit mistake than a plan.
MIN_DURATION = 0.01
MAX_DURATION = 365 * 24 * 3600.0


def make_policy(
    failure_threshold: float = 0.5,
    minimum_calls: int = 20,
    window: float = 60.0,
    reset_timeout: float = 30.0,
    half_open_calls: int = 3,
    mode: Mode = "rate",
    max_reset_timeout: float | None = None,
) -> BreakerPolicy:
    """Validate breaker options; raise ``ConfigurationError`` naming the invalid value.

    ``max_reset_timeout`` defaults to 10 times ``reset_timeout``.
    """
    if mode == "rate":
        if _is_number(failure_threshold) and 0 < failure_threshold <= 1:
            threshold = float(failure_threshold)
        else:
            raise ConfigurationError(
                "failure_threshold must be a failure rate above 0 and at most 1 in rate mode, "
                f"got {failure_threshold!r}"
            )
    elif mode == "consecutive":
        if _is_positive_int(failure_threshold):
            threshold = float(failure_threshold)
        else:
            raise ConfigurationError(
                "failure_threshold must be a positive integer (a count of consecutive failures) "
                f"in consecutive mode, got {failure_threshold!r}"
            )
    else:
        raise ConfigurationError(f"mode must be 'rate' or 'consecutive', got {mode!r}")
    if not _is_positive_int(minimum_calls):
        raise ConfigurationError(f"minimum_calls must be a positive integer, got {minimum_calls!r}")
    if not _is_positive_int(half_open_calls):
        raise ConfigurationError(
            f"half_open_calls must be a positive integer, got {half_open_calls!r}"
        )
    for name, value in (("window", window), ("reset_timeout", reset_timeout)):
        if not (_is_number(value) and MIN_DURATION <= value <= MAX_DURATION):
            raise ConfigurationError(
                f"{name} must be between {MIN_DURATION:g} and {MAX_DURATION:g} seconds, "
                f"got {value!r}"
            )
    cap = (
        min(10 * float(reset_timeout), MAX_DURATION)
        if max_reset_timeout is None
        else max_reset_timeout
    )
    if not (_is_number(cap) and reset_timeout <= cap <= MAX_DURATION):
        raise ConfigurationError(
            f"max_reset_timeout must be a number of seconds at least reset_timeout "
            f"({reset_timeout!r}), got {max_reset_timeout!r}"
        )
    return BreakerPolicy(
        failure_threshold=threshold,
        minimum_calls=minimum_calls,
        window=float(window),
        reset_timeout=float(reset_timeout),
        half_open_calls=half_open_calls,
        mode=mode,
        max_reset_timeout=float(cap),
    )


def admit(policy: BreakerPolicy, state: BreakerState, now: float) -> Admission:
    """Decide whether a call may run now; an admitted probe is counted in the new state."""
    if state.phase is Phase.CLOSED:
        return Admission(state, Ticket(probe=False, generation=state.generation))

    if state.phase is Phase.OPEN:
        assert state.retry_at is not None
        if now < state.retry_at:
            return Admission(state, None, state.retry_at)
        state = _start_probe_round(state, now, state.generation)

    assert state.half_open_since is not None and state.reset_timeout is not None
    round_end = state.half_open_since + state.reset_timeout
    if now >= round_end and state.probes_admitted >= policy.half_open_calls:
        # A probe has not reported within the reset timeout (its process may have
        # died), and without its outcome the round can never close the breaker.
        round_end = now + state.reset_timeout
        state = _start_probe_round(state, now, state.generation + 1)
    if state.probes_admitted >= policy.half_open_calls:
        return Admission(state, None, round_end)
    state = dataclasses.replace(state, probes_admitted=state.probes_admitted + 1)
    return Admission(state, Ticket(probe=True, generation=state.generation))


def record(
    policy: BreakerPolicy, state: BreakerState, ticket: Ticket, outcome: Outcome, now: float
) -> BreakerState:
    """Count the outcome of an admitted call and return the new state.

    The outcome of a call admitted while closed is counted only while the
    breaker is still closed, and a probe's only in its own half-open round.
    """
    if ticket.probe:
        if state.phase is not Phase.HALF_OPEN or ticket.generation != state.generation:
            return state
        return _record_probe(policy, state, outcome, now)
    if state.phase is not Phase.CLOSED or outcome is Outcome.IGNORED:
        return state

    failed = outcome is Outcome.FAILURE
    state = dataclasses.replace(
        state,
        buckets=_add_to_buckets(policy, state.buckets, now, failed),
        consecutive_failures=state.consecutive_failures + 1 if failed else 0,
    )
    if failed and _should_open(policy, state, now):
        return open_breaker(state, now, policy.reset_timeout)
    return state


def open_breaker(state: BreakerState, now: float, duration: float) -> BreakerState:
    """Return the state opened at ``now`` for ``duration`` seconds, keeping the counts.

    Opening an open breaker again sets its new times but is no transition,
    so ``opened_count`` grows only when the phase changes.
    """
    opened = state.opened_count + (0 if state.phase is Phase.OPEN else 1)
    return dataclasses.replace(
        state,
        phase=Phase.OPEN,
        generation=state.generation + 1,
        opened_at=now,
        retry_at=now + duration,
        reset_timeout=duration,
        half_open_since=None,
        probes_admitted=0,
        probe_successes=0,
        opened_count=opened,
    )


def close_breaker(state: BreakerState, generation: int) -> BreakerState:
    """Return a closed state with no calls counted, keeping the transition counts."""
    return BreakerState(
        generation=generation,
        opened_count=state.opened_count,
        half_opened_count=state.half_opened_count,
        closed_count=state.closed_count + (0 if state.phase is Phase.CLOSED else 1),
    )


def window_counts(policy: BreakerPolicy, state: BreakerState, now: float) -> tuple[int, int]:
    """Return ``(calls, failures)`` counted in the window that ends at ``now``."""
    first = _bucket_index(policy, now) - BUCKETS_PER_WINDOW + 1
    live = [bucket for bucket in state.buckets if bucket[0] >= first]
    failures = sum(bucket[2] for bucket in live)
    return sum(bucket[1] for bucket in live) + failures, failures


def failure_rate(policy: BreakerPolicy, state: BreakerState, now: float) -> float:
    """Return the failure rate in the window that ends at ``now`` (0.0 without calls)."""
    calls, failures = window_counts(policy, state, now)
    return failures / calls if calls else 0.0


def _record_probe(
    policy: BreakerPolicy, state: BreakerState, outcome: Outcome, now: float
) -> BreakerState:
    if outcome is Outcome.IGNORED:
        # The probe proved nothing, so its slot goes to the next caller.
        return dataclasses.replace(state, probes_admitted=max(0, state.probes_admitted - 1))
    if outcome is Outcome.FAILURE:
        assert state.reset_timeout is not None
        longer = min(state.reset_timeout * 2, policy.max_reset_timeout)
        return open_breaker(state, now, longer)

    state = dataclasses.replace(state, probe_successes=state.probe_successes + 1)
    if state.probe_successes >= policy.half_open_calls:
        return close_breaker(state, state.generation)
    return state


def _start_probe_round(state: BreakerState, now: float, generation: int) -> BreakerState:
    # A restarted round of a half-open breaker is no transition.
    half_opened = state.half_opened_count + (0 if state.phase is Phase.HALF_OPEN else 1)
    return dataclasses.replace(
        state,
        phase=Phase.HALF_OPEN,
        generation=generation,
        half_open_since=now,
        probes_admitted=0,
        probe_successes=0,
        half_opened_count=half_opened,
    )


def _should_open(policy: BreakerPolicy, state: BreakerState, now: float) -> bool:
    if policy.mode == "consecutive":
        return state.consecutive_failures >= policy.failure_threshold
    calls, failures = window_counts(policy, state, now)
    return calls >= policy.minimum_calls and failures / calls >= policy.failure_threshold


def _add_to_buckets(
    policy: BreakerPolicy, buckets: tuple[tuple[int, int, int], ...], now: float, failed: bool
) -> tuple[tuple[int, int, int], ...]:
    current = _bucket_index(policy, now)
    first = current - BUCKETS_PER_WINDOW + 1
    kept = [bucket for bucket in buckets if first <= bucket[0] < current]
    successes, failures = next(((s, f) for i, s, f in buckets if i == current), (0, 0))
    if failed:
        failures += 1
    else:
        successes += 1
    kept.append((current, successes, failures))
    return tuple(kept)


def _bucket_index(policy: BreakerPolicy, now: float) -> int:
    return math.floor(now / policy.bucket_width)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


#: Latest Unix time a stored breaker state may hold (the year 2286); later is corruption.
MAX_TIME = 1e10


def _optional_number(data: dict[str, object], field: str, limit: float) -> float | None:
    """Return ``data[field]`` as a float from 0 to ``limit``, or None; raise ``ValueError``."""
    value = data[field]
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= limit  # Also false for NaN.
    ):
        raise ValueError(f"{field} must be a number from 0 to {limit:g} or null, got {value!r}")
    return float(value)
