"""The store-backed token bucket, on every backend: grants, waits, reservations and sharing."""

from __future__ import annotations

import asyncio
import multiprocessing
import queue as queue_module
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from conformance_backends import BackendTarget, FakeClock

from sluicegate import ConfigurationError, StoreUnavailable
from sluicegate.backends.base import Backend
from sluicegate.ratelimit import MIN_WAIT, Rate, RateLimiter, parse_rate
from sluicegate.store import Store

from .processes import take_tokens


def limiter(
    store: Store, clock: FakeClock, rate: str = "10/s", burst: int | None = None
) -> RateLimiter:
    return RateLimiter("smtp", rate, store, burst=burst, clock=clock)


def no_store() -> Store:
    raise AssertionError("a test of the options reached the store")


def max_in_window(times: list[float], span: float) -> int:
    """Return the maximum number of ``times`` in any closed interval ``span`` seconds long."""
    ordered = sorted(times)
    largest, first = 0, 0
    for last, when in enumerate(ordered):
        while when - ordered[first] > span:
            first += 1
        largest = max(largest, last - first + 1)
    return largest


# -- one process


def test_new_bucket_grants_burst(store: Backend, clock: FakeClock) -> None:
    bucket = limiter(store, clock, "10/s", burst=3)
    assert [bucket.try_acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_acquire() > 0


def test_wait_until_next_token(store: Backend, clock: FakeClock) -> None:
    bucket = limiter(store, clock, "10/s", burst=1)
    assert bucket.try_acquire() == 0.0
    wait = bucket.try_acquire()
    assert wait == pytest.approx(0.1, abs=1e-6)
    clock.advance(0.05)
    assert bucket.try_acquire() == pytest.approx(0.05, abs=1e-6)
    clock.advance(0.05)
    assert bucket.try_acquire() == 0.0


def test_wait_has_minimum(store: Backend, clock: FakeClock) -> None:
    bucket = limiter(store, clock, "10/s", burst=1)
    bucket.try_acquire()
    clock.advance(0.0999)
    assert bucket.try_acquire() == MIN_WAIT


def test_refill_capped_at_burst(store: Backend, clock: FakeClock) -> None:
    bucket = limiter(store, clock, "10/s", burst=4)
    for _ in range(4):
        bucket.try_acquire()
    clock.advance(3600)
    assert bucket.state().tokens == 4
    granted = [bucket.try_acquire() for _ in range(5)]
    assert granted[:4] == [0.0] * 4
    assert granted[4] > 0


def test_default_burst_is_one_second(store: Backend, clock: FakeClock) -> None:
    bucket = limiter(store, clock, "1000/m")
    assert bucket.burst == 16
    granted = [bucket.try_acquire() for _ in range(17)]
    assert granted.count(0.0) == 16


def test_slow_rate_waits_long(store: Backend, clock: FakeClock) -> None:
    bucket = limiter(store, clock, "5/h")
    assert bucket.try_acquire() == 0.0
    assert bucket.try_acquire() == pytest.approx(720, abs=1e-3)


def test_clock_behind_mints_nothing(store: Backend, clock: FakeClock) -> None:
    ahead = FakeClock(clock.now + 10)
    limiter(store, ahead, "10/s", burst=2).try_acquire()
    limiter(store, ahead, "10/s", burst=2).try_acquire()
    behind = limiter(store, clock, "10/s", burst=2)
    assert behind.try_acquire() == pytest.approx(10.1, abs=1e-6)
    assert behind.state().tokens == 0


def test_state_before_and_after(store: Backend, clock: FakeClock) -> None:
    bucket = limiter(store, clock, "10/s", burst=5)
    fresh = bucket.state()
    assert fresh.name == "smtp"
    assert fresh.tokens == 5
    assert fresh.rate == Rate(10, 1.0)
    assert fresh.burst == 5
    assert fresh.updated_at is None
    bucket.try_acquire()
    bucket.try_acquire()
    taken_at = clock.now
    clock.advance(0.1)
    snapshot = bucket.state()
    assert snapshot.tokens == pytest.approx(4, abs=1e-6)
    assert snapshot.updated_at == taken_at


def test_reserve_goes_into_debt(store: Backend, clock: FakeClock) -> None:
    bucket = limiter(store, clock, "10/s", burst=1)
    waits = [bucket.reserve(0.35) for _ in range(4)]
    assert [granted for granted, _ in waits] == [True] * 4
    assert [wait for _, wait in waits] == pytest.approx([0.0, 0.1, 0.2, 0.3], abs=1e-6)
    granted, wait = bucket.reserve(0.35)
    assert not granted
    assert wait == pytest.approx(0.05, abs=1e-6)
    assert bucket.state().tokens == pytest.approx(-3, abs=1e-6)
    assert bucket.try_acquire() == pytest.approx(0.4, abs=1e-6)


def test_reserve_zero_is_try_acquire(store: Backend, clock: FakeClock) -> None:
    bucket = limiter(store, clock, "10/s", burst=1)
    assert bucket.reserve(0.0) == (True, 0.0)
    granted, wait = bucket.reserve(0.0)
    assert not granted
    assert wait == pytest.approx(0.1, abs=1e-6)


def test_reserve_due_times_bounded(store: Backend, clock: FakeClock) -> None:
    """Tokens fall due at most ``burst + rate * t`` times in any span of t seconds."""
    bucket = limiter(store, clock, "20/s", burst=3)
    draw = random.Random(7)
    due: list[float] = []
    for _ in range(300):
        granted, wait = bucket.reserve(draw.choice([0.0, 0.1, 0.5]))
        if granted:
            due.append(clock.now + wait)
        clock.advance(draw.uniform(0, 0.04))
    assert len(due) > 100
    for span in (0.0, 0.25, 1.0, 3.0):
        assert max_in_window(due, span) <= 3 + 20 * span + 1e-6


def test_names_have_own_buckets(store: Backend, clock: FakeClock) -> None:
    first = RateLimiter("a", "1/s", store, clock=clock)
    second = RateLimiter("b", "1/s", store, clock=clock)
    assert first.try_acquire() == 0.0
    assert second.try_acquire() == 0.0
    assert first.try_acquire() > 0
    assert sorted(store.keys("ratelimit:")) == ["ratelimit:a", "ratelimit:b"]


def test_store_factory_accepted(store: Backend, clock: FakeClock) -> None:
    bucket = RateLimiter("smtp", parse_rate("1/s"), lambda: store, clock=clock)
    assert bucket.try_acquire() == 0.0
    assert bucket.try_acquire() > 0


def test_async_twins(store: Backend, clock: FakeClock) -> None:
    bucket = limiter(store, clock, "10/s", burst=1)

    async def scenario() -> tuple[float, tuple[bool, float]]:
        return await bucket.atry_acquire(), await bucket.areserve(1.0)

    first, (granted, wait) = asyncio.run(scenario())
    assert first == 0.0
    assert granted
    assert wait == pytest.approx(0.1, abs=1e-6)


def test_corrupt_bucket_raises(store: Backend, clock: FakeClock) -> None:
    assert store.compare_and_set("ratelimit:smtp", None, b'{"version": 99}')
    bucket = limiter(store, clock)
    with pytest.raises(StoreUnavailable, match="ratelimit:smtp"):
        bucket.try_acquire()
    with pytest.raises(StoreUnavailable, match="delete that key"):
        bucket.state()


# -- several connections, threads and processes


def test_connections_share_bucket(connect: Callable[[], Backend], clock: FakeClock) -> None:
    one = limiter(connect(), clock, "10/s", burst=2)
    other = limiter(connect(), clock, "10/s", burst=2)
    assert one.try_acquire() == 0.0
    assert other.try_acquire() == 0.0
    assert one.try_acquire() > 0
    assert other.try_acquire() > 0
    clock.advance(0.1)
    assert other.try_acquire() == 0.0
    assert one.try_acquire() > 0


def test_threads_never_exceed_rate(connect: Callable[[], Backend], clock: FakeClock) -> None:
    """Four threads on four connections request far more tokens than the bucket refills."""
    limiters = [limiter(connect(), clock, "50/s", burst=5) for _ in range(4)]
    start = clock.now

    def ask(bucket: RateLimiter) -> int:
        return [bucket.try_acquire() for _ in range(6)].count(0.0)

    granted = 0
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(20):
            granted += sum(pool.map(ask, limiters))
            clock.advance(0.05)
    elapsed = clock.now - 0.05 - start  # The last advance came after the last grant.
    assert granted <= 5 + 50 * elapsed
    # Demand always exceeded the refill, so every whole token was taken.
    assert granted == int(5 + 50 * elapsed)


def test_processes_never_exceed_rate(target: BackendTarget) -> None:
    """Three processes on the real clock never take more than rate + burst in one second."""
    processes_count, rate, duration = 3, parse_rate("40/s"), 1.2
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(processes_count)
    results = context.Queue()
    processes = [
        context.Process(target=take_tokens, args=(target, str(rate), duration, start, results))
        for _ in range(processes_count)
    ]
    for process in processes:
        process.start()
    outcomes: list[dict[str, Any]] = []
    try:
        outcomes = [results.get(timeout=120) for _ in processes]
    except queue_module.Empty:
        pass
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join(timeout=10)

    assert len(outcomes) == processes_count
    assert [outcome["error"] for outcome in outcomes] == [None] * processes_count
    grants = [tuple(grant) for outcome in outcomes for grant in outcome["grants"]]
    burst = 40
    # A grant read the clock between its ``before`` and ``after`` times.
    first_possible = min(before for before, _ in grants)
    last_possible = max(after for _, after in grants)
    assert len(grants) <= burst + rate.per_second * (last_possible - first_possible)
    assert len(grants) >= burst  # The processes did contend for the tokens.
    for window_start in sorted(before for before, _ in grants):
        inside = [
            grant for grant in grants if grant[0] >= window_start and grant[1] <= window_start + 1.0
        ]
        assert len(inside) <= rate.per_second + burst


# -- options


@pytest.mark.parametrize("burst", [0, -1, True, 1.5, "3", 10**10])
def test_invalid_burst_rejected(burst: object, clock: FakeClock) -> None:
    with pytest.raises(ConfigurationError, match="burst must be an integer"):
        RateLimiter("smtp", "1/s", no_store, burst=burst, clock=clock)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", None, 5, "x" * 201])
def test_invalid_name_rejected(name: object) -> None:
    with pytest.raises(ConfigurationError, match="name must be a non-empty string"):
        RateLimiter(name, "1/s", no_store)  # type: ignore[arg-type]


@pytest.mark.parametrize("rate", [10, None, (10, 1.0)])
def test_invalid_rate_type_rejected(rate: object) -> None:
    with pytest.raises(ConfigurationError, match="rate must be a Rate or a string"):
        RateLimiter("smtp", rate, no_store)  # type: ignore[arg-type]


def test_invalid_rate_text_rejected() -> None:
    with pytest.raises(ConfigurationError, match="invalid rate '10 per second'"):
        RateLimiter("smtp", "10 per second", no_store)


@pytest.mark.parametrize("max_wait", [-0.1, float("nan"), float("inf"), True, "1"])
def test_invalid_max_wait_rejected(max_wait: object) -> None:
    bucket = RateLimiter("smtp", "1/s", no_store)
    with pytest.raises(ValueError, match="max_wait must be a finite number"):
        bucket.reserve(max_wait)  # type: ignore[arg-type]


def test_update_conflicts_give_up(clock: FakeClock) -> None:
    class AlwaysConflicting:
        """A store whose value changes between every read and swap."""

        def get_value(self, key: str) -> bytes | None:
            return None

        def compare_and_set(self, key: str, expected: bytes | None, value: bytes | None) -> bool:
            return False

    bucket = RateLimiter("smtp", "1/s", AlwaysConflicting(), clock=clock)  # type: ignore[arg-type]
    with pytest.raises(StoreUnavailable, match="kept changing"):
        bucket.try_acquire()


def test_repr_shows_options() -> None:
    bucket = RateLimiter("smtp", "1000/m", no_store)
    assert repr(bucket) == "RateLimiter('smtp', '1000/m', burst=16)"
