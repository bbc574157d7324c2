"""The store-backed retry budget, on every backend: allowance, postponement, flushing, sharing."""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
import queue as queue_module
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest
from conformance_backends import BackendTarget, FakeClock

from sluicegate import ConfigurationError, StoreUnavailable
from sluicegate.backends.base import Backend
from sluicegate.retry_budget import BUCKETS_PER_WINDOW, RetryBudget, make_budget_policy
from sluicegate.store import Store

from .processes import request_retries


def budget(store: Store, clock: FakeClock, **options: Any) -> RetryBudget:
    return RetryBudget("mail", store, clock=clock, **options)


def no_store() -> Store:
    raise AssertionError("a test of the options reached the store")


def max_in_window(bucket_indexes: list[int]) -> int:
    """Return the maximum number of ``bucket_indexes`` within any ten consecutive buckets."""
    ordered = sorted(bucket_indexes)
    largest, first = 0, 0
    for last, index in enumerate(ordered):
        while index - ordered[first] >= BUCKETS_PER_WINDOW:
            first += 1
        largest = max(largest, last - first + 1)
    return largest


# -- admission


def test_floor_without_first_attempts(store: Backend, clock: FakeClock) -> None:
    retries = budget(store, clock, min_retries=3)
    assert [retries.admit_retry(2.0) for _ in range(3)] == [2.0, 2.0, 2.0]
    assert retries.admit_retry(2.0) > 2.0


def test_allowance_follows_ratio(store: Backend, clock: FakeClock) -> None:
    retries = budget(store, clock, ratio=0.2, min_retries=1)
    retries.note_first_attempt(100)
    delays = [retries.admit_retry(0.5) for _ in range(25)]
    assert delays[:20] == [0.5] * 20
    assert all(delay > 0.5 for delay in delays[20:])


def test_allowance_rounds_down(store: Backend, clock: FakeClock) -> None:
    retries = budget(store, clock, ratio=0.1, min_retries=1)
    retries.note_first_attempt(39)
    assert retries.state().allowance == 1  # Nothing flushed yet.
    retries.flush()
    assert retries.state().allowance == 3
    retries.note_first_attempt(1)
    retries.flush()
    assert retries.state().allowance == 4


def test_postponed_past_window_exit(store: Backend, clock: FakeClock) -> None:
    """A retry over the budget waits until the full bucket leaves the window, plus jitter."""
    retries = budget(store, clock, ratio=0.0, min_retries=5, window=60.0)
    clock.advance(2.5)  # Off a bucket boundary, so the exit time below is not now.
    for _ in range(5):
        assert retries.admit_retry(1.0) == 1.0
    full_bucket = math.floor((clock.now + 1.0) / 6.0)
    until_exit = (full_bucket + BUCKETS_PER_WINDOW) * 6.0 - clock.now
    first = retries.admit_retry(1.0)
    assert until_exit <= first <= until_exit + 60.0
    later = [retries.admit_retry(1.0) for _ in range(19)]
    assert min(later) >= until_exit
    snapshot = retries.state()
    assert snapshot.retries == 5
    assert snapshot.retries_scheduled == 20


def test_postponement_spread_by_jitter(store: Backend, clock: FakeClock) -> None:
    """Retries that all fit once one bucket leaves the window spread over the next window."""
    retries = budget(store, clock, ratio=0.0, min_retries=30, window=60.0)
    for _ in range(30):
        retries.admit_retry(0.0)
    until_exit = (math.floor(clock.now / 6.0) + BUCKETS_PER_WINDOW) * 6.0 - clock.now
    delays = [retries.admit_retry(0.0) for _ in range(29)]
    assert min(delays) >= until_exit
    assert max(delays) <= until_exit + 60.0
    assert max(delays) - min(delays) > 20.0


def test_long_delay_counts_at_run_time(store: Backend, clock: FakeClock) -> None:
    """A retry that runs after the window is full counts there, not now."""
    retries = budget(store, clock, ratio=0.0, min_retries=2, window=60.0)
    assert retries.admit_retry(0.0) == 0.0
    assert retries.admit_retry(0.0) == 0.0
    assert retries.admit_retry(120.0) == 120.0
    assert retries.admit_retry(0.0) > 0.0
    snapshot = retries.state()
    assert snapshot.retries == 2
    assert snapshot.retries_scheduled == 2


def test_window_never_over_allowance(store: Backend, clock: FakeClock) -> None:
    """Every retry counts in the bucket it runs in, and no ten buckets contain more than allowed."""
    retries = budget(store, clock, ratio=0.0, min_retries=5, window=10.0)
    draw = random.Random(11)
    booked: list[int] = []
    admitted = 0
    for _ in range(200):
        delay = draw.choice([0.0, 0.3, 2.0, 15.0])
        granted = retries.admit_retry(delay)
        booked.append(math.floor(clock.now + granted))  # Buckets are 1 s wide.
        admitted += granted == delay
        clock.advance(draw.uniform(0, 5.0))
    assert max_in_window(booked) <= 5
    # Retries are requested a little slower on average than the budget allows,
    # but in bursts, so some keep their delay and some are postponed.
    assert 50 <= admitted < 200


def test_first_attempts_age_out(store: Backend, clock: FakeClock) -> None:
    retries = budget(store, clock, ratio=0.5, min_retries=2, window=60.0)
    retries.note_first_attempt(40)
    retries.flush()
    assert retries.state().allowance == 20
    clock.advance(61)
    snapshot = retries.state()
    assert snapshot.first_attempts == 0
    assert snapshot.allowance == 2


def test_retries_age_out(store: Backend, clock: FakeClock) -> None:
    retries = budget(store, clock, ratio=0.0, min_retries=2, window=60.0)
    retries.admit_retry(0.0)
    retries.admit_retry(0.0)
    assert retries.state().exhausted
    clock.advance(61)
    assert not retries.state().exhausted
    assert retries.admit_retry(3.0) == 3.0


def test_state_snapshot(store: Backend, clock: FakeClock) -> None:
    retries = budget(store, clock, ratio=0.25, min_retries=2, window=30.0)
    fresh = retries.state()
    assert fresh.queue == "mail"
    assert (fresh.ratio, fresh.window, fresh.min_retries) == (0.25, 30.0, 2)
    assert (fresh.first_attempts, fresh.retries, fresh.retries_scheduled) == (0, 0, 0)
    assert fresh.allowance == 2
    assert not fresh.exhausted
    retries.note_first_attempt(12)
    for _ in range(4):
        retries.admit_retry(0.0)
    snapshot = retries.state()
    assert snapshot.first_attempts == 12
    assert snapshot.allowance == 3
    assert snapshot.retries == 3
    assert snapshot.retries_scheduled == 1
    assert snapshot.exhausted


# -- counting first attempts


def test_flush_writes_counts_once(store: Backend, clock: FakeClock) -> None:
    retries = budget(store, clock)
    retries.note_first_attempt()
    retries.note_first_attempt(49)
    assert retries.state().first_attempts == 0
    assert retries.flush() == 50
    assert retries.flush() == 0
    assert retries.state().first_attempts == 50


def test_admit_flushes_counts(store: Backend, clock: FakeClock) -> None:
    retries = budget(store, clock, ratio=0.2, min_retries=1)
    retries.note_first_attempt(100)
    retries.admit_retry(1.0)
    assert retries.flush() == 0
    snapshot = retries.state()
    assert snapshot.first_attempts == 100
    assert snapshot.allowance == 20


def test_counts_noted_in_own_bucket(store: Backend, clock: FakeClock) -> None:
    """First attempts count in the bucket they were noted in, however late the flush."""
    retries = budget(store, clock, ratio=1.0, min_retries=1, window=60.0)
    retries.note_first_attempt(10)
    clock.advance(30)
    retries.note_first_attempt(5)
    retries.flush()
    assert retries.state().first_attempts == 15
    clock.advance(31)
    assert retries.state().first_attempts == 5


def test_failed_flush_keeps_counts(store: Backend, clock: FakeClock) -> None:
    class Flaky:
        """The test's store, whose swaps fail while ``failing`` is set."""

        failing = True

        def get_value(self, key: str) -> bytes | None:
            return store.get_value(key)

        def compare_and_set(self, key: str, expected: bytes | None, value: bytes | None) -> bool:
            return not self.failing and store.compare_and_set(key, expected, value)

    flaky = Flaky()
    retries = budget(flaky, clock)  # type: ignore[arg-type]
    retries.note_first_attempt(7)
    with pytest.raises(StoreUnavailable, match="kept changing"):
        retries.flush()
    with pytest.raises(StoreUnavailable):
        retries.admit_retry(1.0)
    flaky.failing = False
    assert retries.flush() == 7
    assert retries.state().first_attempts == 7


def test_note_from_threads(store: Backend, clock: FakeClock) -> None:
    retries = budget(store, clock)
    start = threading.Barrier(8)

    def note() -> None:
        start.wait(timeout=30)
        for _ in range(1000):
            retries.note_first_attempt()

    threads = [threading.Thread(target=note) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert retries.flush() == 8000
    assert retries.state().first_attempts == 8000


def test_async_twins(store: Backend, clock: FakeClock) -> None:
    retries = budget(store, clock, ratio=0.5, min_retries=1)

    async def scenario() -> tuple[int, float]:
        retries.note_first_attempt(4)
        return await retries.aflush(), await retries.aadmit_retry(1.5)

    assert asyncio.run(scenario()) == (4, 1.5)


def test_corrupt_state_raises(store: Backend, clock: FakeClock) -> None:
    assert store.compare_and_set("retry_budget:mail", None, b'{"version":1,"buckets":[[1,-2,0]]}')
    retries = budget(store, clock)
    with pytest.raises(StoreUnavailable, match="retry_budget:mail"):
        retries.admit_retry(1.0)
    with pytest.raises(StoreUnavailable, match="delete that key"):
        retries.state()


def test_stored_state_is_pruned(store: Backend, clock: FakeClock) -> None:
    retries = budget(store, clock, window=60.0)
    retries.note_first_attempt(3)
    retries.admit_retry(0.0)
    clock.advance(120)
    retries.note_first_attempt(1)
    retries.flush()
    raw = store.get_value("retry_budget:mail")
    assert raw is not None
    assert orjson.loads(raw)["buckets"] == [[math.floor(clock.now / 6.0), 1, 0]]


# -- logging


def test_logs_exhaustion_once(
    store: Backend, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    retries = budget(store, clock, ratio=0.0, min_retries=1, window=10.0)
    with caplog.at_level(logging.INFO, logger="sluicegate.retry_budget"):
        retries.admit_retry(0.0)
        retries.admit_retry(0.0)
        retries.admit_retry(0.0)
        clock.advance(100)
        retries.admit_retry(0.0)
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith("retry budget exhausted")
    assert "queue=mail" in messages[0]
    assert "allowance=1" in messages[0]
    assert messages[1].startswith("retry budget available again")


# -- several connections, threads and processes


def test_connections_share_budget(connect: Callable[[], Backend], clock: FakeClock) -> None:
    one = budget(connect(), clock, ratio=0.1, min_retries=1)
    other = budget(connect(), clock, ratio=0.1, min_retries=1)
    one.note_first_attempt(20)
    one.flush()
    assert other.state().allowance == 2
    assert other.admit_retry(1.0) == 1.0
    assert one.admit_retry(1.0) == 1.0
    assert other.admit_retry(1.0) > 1.0
    assert one.state().retries_scheduled == 1


def test_threads_admit_exactly_allowance(connect: Callable[[], Backend], clock: FakeClock) -> None:
    """Four threads on four connections request 60 retries at once, and 20 keep their delay."""
    budgets = [budget(connect(), clock, ratio=0.2, min_retries=1) for _ in range(4)]
    budgets[0].note_first_attempt(100)
    budgets[0].flush()

    def ask(retries: RetryBudget) -> list[float]:
        return [retries.admit_retry(0.5) for _ in range(15)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        delays = [delay for chunk in pool.map(ask, budgets) for delay in chunk]
    assert delays.count(0.5) == 20
    assert all(delay > 0.5 for delay in delays if delay != 0.5)
    booked = [math.floor((clock.now + delay) / 6.0) for delay in delays]
    assert max_in_window(booked) <= 20
    snapshot = budgets[1].state()
    assert snapshot.retries + snapshot.retries_scheduled == 60


def test_processes_admit_exactly_allowance(
    target: BackendTarget, connect: Callable[[], Backend]
) -> None:
    """Two processes on the real clock share one budget of 20 retries per minute."""
    seed = RetryBudget("shared", connect())
    seed.note_first_attempt(100)
    seed.flush()
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    results = context.Queue()
    processes = [
        context.Process(target=request_retries, args=(target, 15, 0.5, start, results))
        for _ in range(2)
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

    assert len(outcomes) == 2
    assert [outcome["error"] for outcome in outcomes] == [None, None]
    delays = [delay for outcome in outcomes for delay in outcome["delays"]]
    assert len(delays) == 30
    # The 100 first attempts leave the window 54 to 60 s after the seed
    # flushed them, so the count is exact while the test takes less than that.
    assert delays.count(0.5) == 20
    assert all(delay > 0.5 for delay in delays if delay != 0.5)


# -- options


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ratio": -0.1}, "ratio must be"),
        ({"ratio": 101}, "ratio must be"),
        ({"ratio": math.nan}, "ratio must be"),
        ({"ratio": True}, "ratio must be"),
        ({"ratio": "0.2"}, "ratio must be"),
        ({"window": 0}, "window must be between"),
        ({"window": math.inf}, "window must be between"),
        ({"window": 10**9}, "window must be between"),
        ({"min_retries": 0}, "min_retries must be an integer"),
        ({"min_retries": 2.5}, "min_retries must be an integer"),
        ({"min_retries": True}, "min_retries must be an integer"),
        ({"min_retries": 10**7}, "min_retries must be an integer"),
    ],
)
def test_invalid_options_rejected(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        make_budget_policy(**options)
    with pytest.raises(ConfigurationError, match=message):
        RetryBudget("mail", no_store, **options)


def test_defaults() -> None:
    policy = make_budget_policy()
    assert (policy.ratio, policy.window, policy.min_retries) == (0.2, 60.0, 10)
    assert policy.bucket_width == 6.0
    assert policy.allowance(0) == 10
    assert policy.allowance(51) == 10
    assert policy.allowance(55) == 11
    assert make_budget_policy(ratio=0).allowance(10**6) == 10


@pytest.mark.parametrize("queue", ["", None, 3, "q" * 201])
def test_invalid_queue_rejected(queue: object) -> None:
    with pytest.raises(ConfigurationError, match="queue must be a non-empty string"):
        RetryBudget(queue, no_store)  # type: ignore[arg-type]


@pytest.mark.parametrize("delay", [-1.0, math.nan, math.inf, True, "1"])
def test_invalid_delay_rejected(delay: object) -> None:
    with pytest.raises(ValueError, match="delay must be a finite number"):
        RetryBudget("mail", no_store).admit_retry(delay)  # type: ignore[arg-type]


def test_negative_count_rejected() -> None:
    with pytest.raises(ValueError, match="count must be at least 0"):
        RetryBudget("mail", no_store).note_first_attempt(-1)
