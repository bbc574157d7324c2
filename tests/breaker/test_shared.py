"""Two breakers on two connections of one backend share one state, on every backend."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conformance_backends import FACTORIES, BackendUnavailable, FakeClock

from sluicegate import Breaker, BreakerOpen
from sluicegate.backends.base import Backend
from sluicegate.breaker_state import Phase

from .support import fail, succeed


@pytest.fixture(params=sorted(FACTORIES))
def connections(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> Iterator[tuple[Backend, Backend]]:
    """Two connections to a fresh backend of each kind; a missing server skips, or fails in CI."""
    try:
        target = FACTORIES[request.param](tmp_path)
    except BackendUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{request.param} backend unavailable, and CI runs every backend: {exc}")
        pytest.skip(f"{request.param} backend unavailable: {exc}")
    first, second = target.open(clock), target.open(clock)
    yield first, second
    first.close()
    second.close()
    target.cleanup()


def pair(
    connections: tuple[Backend, Backend], clock: FakeClock, **options: object
) -> tuple[Breaker, Breaker]:
    return (
        Breaker("sms", connections[0], clock=clock, **options),  # type: ignore[arg-type]
        Breaker("sms", connections[1], clock=clock, **options),  # type: ignore[arg-type]
    )


def test_open_seen_by_other(connections: tuple[Backend, Backend], clock: FakeClock) -> None:
    one, other = pair(connections, clock, minimum_calls=4, failure_threshold=0.5)
    fail(one, 2)
    fail(other, 2)
    assert one.state().state is Phase.OPEN
    assert other.state().state is Phase.OPEN
    with pytest.raises(BreakerOpen), other:
        pass


def test_probes_limited_across(connections: tuple[Backend, Backend], clock: FakeClock) -> None:
    one, other = pair(
        connections, clock, mode="consecutive", failure_threshold=1, half_open_calls=2
    )
    fail(one)
    clock.advance(30)
    first = one.acquire()
    second = other.acquire()
    with pytest.raises(BreakerOpen):
        one.acquire()
    with pytest.raises(BreakerOpen):
        other.acquire()
    one.release(first, None)
    other.release(second, None)
    assert one.state().state is Phase.CLOSED
    succeed(other)


def test_probe_failure_reopens_for_both(
    connections: tuple[Backend, Backend], clock: FakeClock
) -> None:
    one, other = pair(connections, clock, mode="consecutive", failure_threshold=1)
    fail(one)
    clock.advance(30)
    fail(other)
    snapshot = one.state()
    assert snapshot.state is Phase.OPEN
    assert snapshot.reset_timeout == 60
    assert snapshot.next_probe_at == clock.now + 60


def test_reset_seen_by_other(connections: tuple[Backend, Backend], clock: FakeClock) -> None:
    one, other = pair(connections, clock)
    one.force_open()
    assert other.state().state is Phase.OPEN
    other.reset()
    assert one.state().state is Phase.CLOSED


def test_concurrent_outcomes_all_counted(
    connections: tuple[Backend, Backend], clock: FakeClock
) -> None:
    breakers = pair(connections, clock, minimum_calls=1000)
    with ThreadPoolExecutor(max_workers=4) as pool:
        for future in [pool.submit(succeed, breakers[i % 2], 25) for i in range(4)]:
            future.result()
    assert breakers[0].state().calls == 100
