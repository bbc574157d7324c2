"""The store-backed breaker: guarded calls, snapshots, operator actions and logs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest
from conformance_backends import FakeClock

from sluicegate import App, Breaker, BreakerOpen, ConfigurationError
from sluicegate.backends.sqlite import SQLiteBackend
from sluicegate.breaker_state import Phase

from .support import Down, fail, succeed

MakeBreaker = Callable[..., Breaker]


def test_context_manager_opens(make_breaker: MakeBreaker, clock: FakeClock) -> None:
    breaker = make_breaker(minimum_calls=4, failure_threshold=0.5)
    succeed(breaker, 2)
    fail(breaker, 2)
    with pytest.raises(BreakerOpen) as caught, breaker:
        pass
    assert caught.value.name == "dep"
    assert caught.value.retry_at == clock.now + 30
    assert caught.value.retry_after == 30


def test_open_error_shows_retry() -> None:
    error = BreakerOpen("smtp", 1_700_000_010.0, 10.0)
    assert str(error) == "breaker 'smtp' is open; retry after 10.00s"
    assert "retry_at=1700000010.0" in repr(error)


def test_failure_types_filter(make_breaker: MakeBreaker) -> None:
    breaker = make_breaker(minimum_calls=1, failure_types=(Down,))
    fail(breaker, 3, error=KeyError)
    snapshot = breaker.state()
    assert snapshot.state is Phase.CLOSED
    assert snapshot.calls == 0
    fail(breaker, 1, error=Down)
    assert breaker.state().state is Phase.OPEN


def test_decorator_sync(make_breaker: MakeBreaker) -> None:
    breaker = make_breaker(mode="consecutive", failure_threshold=2)

    @breaker
    def call(fail_it: bool) -> str:
        if fail_it:
            raise Down("down")
        return "ok"

    assert call(False) == "ok"
    assert call.__name__ == "call"
    for _ in range(2):
        with pytest.raises(Down):
            call(True)
    with pytest.raises(BreakerOpen):
        call(False)


def test_decorator_async(make_breaker: MakeBreaker) -> None:
    breaker = make_breaker(mode="consecutive", failure_threshold=2)

    @breaker
    async def call(fail_it: bool) -> str:
        await asyncio.sleep(0)
        if fail_it:
            raise Down("down")
        return "ok"

    async def scenario() -> list[str]:
        seen = [await call(False)]
        for _ in range(2):
            try:
                await call(True)
            except Down:
                seen.append("down")
        try:
            await call(False)
        except BreakerOpen:
            seen.append("open")
        return seen

    assert asyncio.run(scenario()) == ["ok", "down", "down", "open"]


def test_async_with_concurrent_probes(make_breaker: MakeBreaker, clock: FakeClock) -> None:
    breaker = make_breaker(mode="consecutive", failure_threshold=1, half_open_calls=2)
    fail(breaker)
    clock.advance(30)
    release = asyncio.Event()

    async def probe() -> str:
        try:
            async with breaker:
                await release.wait()
                return "ran"
        except BreakerOpen:
            return "rejected"

    async def scenario() -> list[str]:
        tasks = [asyncio.create_task(probe()) for _ in range(4)]
        while breaker.state().probes_admitted < 2:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        release.set()
        return sorted(await asyncio.gather(*tasks))

    assert asyncio.run(asyncio.wait_for(scenario(), 5)) == ["ran", "ran", "rejected", "rejected"]
    assert breaker.state().state is Phase.CLOSED


def test_snapshot_fields(make_breaker: MakeBreaker, clock: FakeClock) -> None:
    breaker = make_breaker(minimum_calls=4, failure_threshold=0.75, window=60, reset_timeout=10)
    succeed(breaker, 1)
    fail(breaker, 2)
    closed = breaker.state()
    assert closed.state is Phase.CLOSED
    assert closed.calls == 3
    assert closed.failures == 2
    assert closed.failure_rate == pytest.approx(2 / 3)
    assert closed.next_probe_at is None
    fail(breaker, 1)
    opened = breaker.state()
    assert opened.state is Phase.OPEN
    assert opened.opened_at == clock.now
    assert opened.next_probe_at == clock.now + 10
    assert opened.reset_timeout == 10
    assert opened.window == 60


def test_reset_closes(make_breaker: MakeBreaker) -> None:
    breaker = make_breaker(mode="consecutive", failure_threshold=1)
    fail(breaker)
    breaker.reset()
    assert breaker.state().state is Phase.CLOSED
    assert breaker.state().consecutive_failures == 0
    succeed(breaker)


def test_force_open_for_duration(make_breaker: MakeBreaker, clock: FakeClock) -> None:
    breaker = make_breaker(reset_timeout=10)
    breaker.force_open(120)
    assert breaker.state().next_probe_at == clock.now + 120
    clock.advance(119)
    with pytest.raises(BreakerOpen), breaker:
        pass
    clock.advance(1)
    succeed(breaker)
    assert breaker.state().state is Phase.HALF_OPEN


@pytest.mark.parametrize("duration", [0, -1, float("inf"), float("nan"), 1e308])
def test_force_open_rejects_bad_duration(make_breaker: MakeBreaker, duration: float) -> None:
    with pytest.raises(ConfigurationError, match=r"duration must be a positive number of seconds"):
        make_breaker().force_open(duration)


def test_transitions_logged(
    make_breaker: MakeBreaker, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sluicegate.breaker")
    breaker = make_breaker(minimum_calls=2, failure_threshold=0.5, half_open_calls=1)
    fail(breaker, 2)
    clock.advance(30)
    succeed(breaker)
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0].startswith(
        "breaker opened name=dep failure_rate=1.000 calls=2 window_s=60 reset_timeout_s=30"
    )
    assert messages[1].startswith("breaker half-open name=dep failure_rate=")
    assert messages[2].startswith("breaker closed name=dep failure_rate=")
    assert len(messages) == 3


def test_corrupt_state_reported(make_breaker: MakeBreaker, store: SQLiteBackend) -> None:
    assert store.compare_and_set("breaker:dep", None, b'{"version": 99}')
    with pytest.raises(Exception, match="breakers reset"):
        make_breaker().state()


def test_app_declares_once(app: App) -> None:
    breaker = app.breaker("payments", failure_threshold=0.3, failure_types=[Down])
    assert app.breaker("payments") is breaker
    assert app.breaker("payments", failure_threshold=0.3, failure_types=(Down,)) is breaker
    assert app.breakers == {"payments": breaker}
    with pytest.raises(ConfigurationError, match="'payments' is declared already"):
        app.breaker("payments", failure_threshold=0.9)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"name": ""}, "breaker name must be a non-empty string, got ''"),
        ({"failure_types": "Down"}, "failure_types must be exception classes"),
        ({"minimum_calls": -3}, "minimum_calls must be a positive integer, got -3"),
    ],
)
def test_app_rejects_invalid(app: App, options: dict[str, object], message: str) -> None:
    name = str(options.pop("name", "dep"))
    with pytest.raises(ConfigurationError, match=message):
        app.breaker(name, **options)  # type: ignore[arg-type]


def test_app_breaker_uses_backend(app: App) -> None:
    breaker = app.breaker("mail", mode="consecutive", failure_threshold=1)
    fail(breaker)
    assert app.backend.keys("breaker:") == ["breaker:mail"]
