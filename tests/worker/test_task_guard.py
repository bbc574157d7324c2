"""TaskGuard on a real SQLite store with a controllable clock: breaker first, then rate limit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sluicegate.backends.sqlite import SQLiteBackend
from sluicegate.breaker import Breaker
from sluicegate.breaker_state import Phase
from sluicegate.ratelimit import RateLimiter, parse_rate
from sluicegate.retry import Backoff
from sluicegate.worker.guards import MAX_HOLD, Admitted, Deferral, TaskGuard


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteBackend]:
    backend = SQLiteBackend(str(tmp_path / "guard.db"))
    yield backend
    backend.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def breaker(store: SQLiteBackend, clock: Clock) -> Breaker:
    return Breaker("dep", store, minimum_calls=2, reset_timeout=10, half_open_calls=1, clock=clock)


def test_open_breaker_defers_until_probe_time_plus_spread(
    store: SQLiteBackend, clock: Clock
) -> None:
    guarded = breaker(store, clock)
    guarded.force_open(10)
    guard = TaskGuard("t", guarded, None, Backoff())

    verdicts = [guard.admit() for _ in range(50)]

    assert all(isinstance(v, Deferral) for v in verdicts)
    delays = [v.delay for v in verdicts if isinstance(v, Deferral)]
    assert all(10.0 <= d <= 12.5 for d in delays)
    assert len(set(delays)) > 1
    assert {v.reason for v in verdicts if isinstance(v, Deferral)} == {"deferred by breaker dep"}


def test_no_jitter_defers_exactly(store: SQLiteBackend, clock: Clock) -> None:
    guarded = breaker(store, clock)
    guarded.force_open(10)

    verdict = TaskGuard("t", guarded, None, Backoff(jitter="none")).admit()

    assert verdict == Deferral(10.0, "deferred by breaker dep")


def test_rate_limit_holds_then_defers(store: SQLiteBackend, clock: Clock) -> None:
    limiter = RateLimiter("t", parse_rate("4/s"), store, burst=1, clock=clock)
    guard = TaskGuard("t", None, limiter, Backoff())

    first, second, third = guard.admit(), guard.admit(), guard.admit()

    assert first == Admitted(None, 0.0)
    # The next token is due in 0.25 s, within MAX_HOLD: the job is held for it.
    assert isinstance(second, Admitted)
    assert second.wait == pytest.approx(0.25)
    # The one after is 0.5 s away: still within MAX_HOLD.
    assert isinstance(third, Admitted)
    assert third.wait == pytest.approx(MAX_HOLD)
    fourth = guard.admit()
    assert isinstance(fourth, Deferral)
    assert fourth.reason == "deferred by rate limit 4/s"


def test_deferred_backlog_gets_turns(store: SQLiteBackend, clock: Clock) -> None:
    limiter = RateLimiter("t", parse_rate("4/s"), store, burst=1, clock=clock)
    guard = TaskGuard("t", None, limiter, Backoff())
    for _ in range(3):
        assert isinstance(guard.admit(), Admitted)

    deferrals = [guard.admit() for _ in range(5)]

    delays = [d.delay for d in deferrals if isinstance(d, Deferral)]
    assert len(delays) == 5
    # The first comes back when its token is within MAX_HOLD, the rest a token apart.
    assert delays == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.25])


def test_refused_rate_limit_gives_back_the_probe(store: SQLiteBackend, clock: Clock) -> None:
    guarded = breaker(store, clock)
    guarded.force_open(10)
    clock.now += 11  # half-open: one probe slot
    limiter = RateLimiter("t", parse_rate("1/h"), store, burst=1, clock=clock)
    limiter.try_acquire()  # the only token of the hour
    guard = TaskGuard("t", guarded, limiter, Backoff())

    verdict = guard.admit()
    ticket = guarded.acquire()  # the probe slot is free again

    assert isinstance(verdict, Deferral)
    assert verdict.reason == "deferred by rate limit 1/h"
    assert ticket.probe
    assert guarded.state().state is Phase.HALF_OPEN


def test_settle_counts_failures_only(store: SQLiteBackend, clock: Clock) -> None:
    guarded = breaker(store, clock)
    guard = TaskGuard("t", guarded, None, Backoff())

    for failure in (None, None, None, True, True):
        verdict = guard.admit()
        assert isinstance(verdict, Admitted)
        guard.settle(verdict.ticket, failure)

    assert guarded.state().state is Phase.OPEN
    assert guarded.state().calls == 2
