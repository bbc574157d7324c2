"""Transition counts in the stored breaker state: what counts, and what survives."""

from __future__ import annotations

from collections.abc import Callable

import orjson
from conformance_backends import FakeClock

from sluicegate.breaker import Breaker
from sluicegate.breaker_state import (
    BreakerState,
    Outcome,
    Phase,
    admit,
    close_breaker,
    make_policy,
    open_breaker,
    record,
)

from .support import fail, succeed

T0 = 1_700_000_000.0

MakeBreaker = Callable[..., Breaker]


def counts(state: BreakerState) -> tuple[int, int, int]:
    """Return the ``(opened, half-opened, closed)`` transition counts of ``state``."""
    return state.opened_count, state.half_opened_count, state.closed_count


def run(state: BreakerState, outcome: Outcome, now: float, **options: object) -> BreakerState:
    policy = make_policy(**options)  # type: ignore[arg-type]
    admission = admit(policy, state, now)
    assert admission.ticket is not None
    return record(policy, admission.state, admission.ticket, outcome, now)


def test_full_cycle_counts_each_change() -> None:
    options = {"minimum_calls": 1, "reset_timeout": 10, "half_open_calls": 1}
    state = run(BreakerState(), Outcome.FAILURE, T0, **options)
    assert state.phase is Phase.OPEN
    assert counts(state) == (1, 0, 0)
    state = run(state, Outcome.FAILURE, T0 + 10, **options)  # A failed probe: open again.
    assert state.phase is Phase.OPEN
    assert counts(state) == (2, 1, 0)
    state = run(state, Outcome.SUCCESS, T0 + 30, **options)
    assert state.phase is Phase.CLOSED
    assert counts(state) == (2, 2, 1)


def test_closed_outcomes_count_nothing() -> None:
    state = BreakerState()
    for outcome in (Outcome.SUCCESS, Outcome.FAILURE, Outcome.IGNORED):
        state = run(state, outcome, T0)
    assert state.phase is Phase.CLOSED
    assert counts(state) == (0, 0, 0)


def test_reopening_open_not_counted() -> None:
    state = open_breaker(BreakerState(), T0, 30)
    state = open_breaker(state, T0 + 5, 60)
    assert state.retry_at == T0 + 65
    assert counts(state) == (1, 0, 0)


def test_restarted_probe_round_not_counted() -> None:
    policy = make_policy(minimum_calls=1, half_open_calls=1, reset_timeout=30)
    state = open_breaker(BreakerState(), T0, 30)
    lost = admit(policy, state, T0 + 30)
    assert lost.ticket is not None
    restarted = admit(policy, lost.state, T0 + 60)
    assert restarted.ticket is not None
    assert restarted.state.generation == lost.state.generation + 1
    assert counts(restarted.state) == (1, 1, 0)


def test_close_keeps_counts() -> None:
    state = BreakerState(phase=Phase.HALF_OPEN, opened_count=4, half_opened_count=3, closed_count=2)
    closed = close_breaker(state, generation=9)
    assert closed.phase is Phase.CLOSED
    assert closed.generation == 9
    assert counts(closed) == (4, 3, 3)
    assert counts(close_breaker(closed, generation=10)) == (4, 3, 3)


def test_counts_round_trip_json() -> None:
    state = BreakerState(opened_count=7, half_opened_count=6, closed_count=5)
    assert BreakerState.decode(state.encode()) == state


def test_decodes_state_without_counts() -> None:
    # A state as stored before the transition counts existed.
    stored = {
        "version": 1,
        "phase": "open",
        "buckets": [[170000000, 3, 4]],
        "consecutive_failures": 4,
        "generation": 2,
        "opened_at": T0,
        "retry_at": T0 + 30,
        "reset_timeout": 30.0,
        "half_open_since": None,
        "probes_admitted": 0,
        "probe_successes": 0,
    }
    state = BreakerState.decode(orjson.dumps(stored))
    assert state.phase is Phase.OPEN
    assert state.buckets == ((170000000, 3, 4),)
    assert counts(state) == (0, 0, 0)


def test_breaker_reset_counts_close(make_breaker: MakeBreaker, clock: FakeClock) -> None:
    breaker = make_breaker(minimum_calls=1, reset_timeout=10, half_open_calls=1)
    fail(breaker)
    clock.advance(10)
    succeed(breaker)
    snapshot = breaker.state()
    assert snapshot.state is Phase.CLOSED
    assert (snapshot.opened_count, snapshot.half_opened_count, snapshot.closed_count) == (1, 1, 1)
    breaker.force_open(60)
    breaker.reset()
    breaker.reset()  # Resetting a closed breaker is no transition.
    snapshot = breaker.state()
    assert (snapshot.opened_count, snapshot.half_opened_count, snapshot.closed_count) == (2, 1, 2)


def test_counts_shared_between_breakers(make_breaker: MakeBreaker) -> None:
    # Two processes' breakers on one store add to the same counts.
    first = make_breaker(minimum_calls=1)
    second = make_breaker(minimum_calls=1)
    fail(first)
    second.reset()
    fail(second)
    assert first.state().opened_count == 2
    assert first.state().closed_count == 1
