"""Redis calls retried after a lost connection read the clock again at each attempt.

Each test makes the first attempt of one script fail with a connection
error while the clock moves past the lease, as a server outage longer than
the lease would. A lease or expiry computed from the first attempt's time
would then be over when the call returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from sluicegate.backends.redis import RedisBackend
from sluicegate.broker import Action, QueueBounds, Settlement
from sluicegate.message import OutgoingMessage, new_id

BOUNDS = QueueBounds()
LEASE = 5.0
OUTAGE = 8.0
START = 1_700_000_000.0


class Clock:
    """A clock that moves only when a test calls ``advance``; returns Unix seconds."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def connect(redis_url: str, clock: Clock) -> Iterator[Callable[[], RedisBackend]]:
    """Open backends on the test's prefix and clock, with a short reconnect backoff."""
    opened: list[RedisBackend] = []

    def open_backend() -> RedisBackend:
        backend = RedisBackend(redis_url, clock=clock, reconnect_timeout=10.0)
        opened.append(backend)
        return backend

    yield open_backend
    for backend in opened:
        backend.close()


def message(clock: Clock) -> OutgoingMessage:
    return OutgoingMessage(new_id(), "q", b"{}", 0, clock(), clock())


def fail_first_attempt(
    monkeypatch: pytest.MonkeyPatch,
    backend: RedisBackend,
    script: str,
    *,
    landed: bool,
    during_outage: Callable[[], None],
) -> None:
    """Make the first call of ``script`` raise a connection error after ``during_outage`` runs.

    With ``landed`` the script runs on the server first, so only its reply
    is lost; otherwise the attempt never reaches the server.
    """
    call = backend._scripts[script]
    attempts: list[int] = []

    def flaky(**kwargs: Any) -> Any:
        attempts.append(1)
        if len(attempts) > 1:
            return call(**kwargs)
        if landed:
            call(**kwargs)
        during_outage()
        raise redis.ConnectionError("Connection reset by peer")

    monkeypatch.setitem(backend._scripts, script, flaky)


def leased_until(backend: RedisBackend, message_id: str) -> float | None:
    score = backend._client.zscore(f"{backend.layout.tag}:q:q:leased", message_id)
    return None if score is None else float(score)


@pytest.mark.parametrize("landed", [False, True], ids=["lost-request", "lost-reply"])
def test_exchange_leases_from_retry_time(
    connect: Callable[[], RedisBackend],
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
    landed: bool,
) -> None:
    backend, other = connect(), connect()
    outgoing = message(clock)
    backend.publish([outgoing], BOUNDS)
    fail_first_attempt(
        monkeypatch, backend, "exchange", landed=landed, during_outage=lambda: clock.advance(OUTAGE)
    )

    deliveries = backend.reserve(["q"], 1, LEASE, "w1")

    assert [d.message_id for d in deliveries] == [outgoing.id]
    delivery = deliveries[0]
    assert delivery.delivery_count == 1
    assert delivery.lease_until == clock() + LEASE
    assert leased_until(backend, outgoing.id) == delivery.lease_until
    clock.advance(LEASE - 1)
    assert other.reserve(["q"], 1, LEASE, "w2") == []
    assert backend.settle([Settlement(delivery, Action.ACK)]) == [True]


def test_replay_omits_delivery_taken_back(
    connect: Callable[[], RedisBackend], clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, other = connect(), connect()
    outgoing = message(clock)
    backend.publish([outgoing], BOUNDS)
    redelivered = []

    def expire_and_redeliver() -> None:
        clock.advance(OUTAGE)
        redelivered.extend(other.reserve(["q"], 1, LEASE, "w2"))

    fail_first_attempt(
        monkeypatch, backend, "exchange", landed=True, during_outage=expire_and_redeliver
    )

    deliveries = backend.reserve(["q"], 1, LEASE, "w1")

    assert deliveries == []
    assert [d.message_id for d in redelivered] == [outgoing.id]
    assert redelivered[0].delivery_count == 2
    assert leased_until(backend, outgoing.id) == redelivered[0].lease_until


def test_extend_leases_from_retry_time(
    connect: Callable[[], RedisBackend], clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = connect()
    backend.publish([message(clock)], BOUNDS)
    (delivery,) = backend.reserve(["q"], 1, LEASE, "w1")
    clock.advance(LEASE - 1)
    fail_first_attempt(
        monkeypatch, backend, "extend", landed=False, during_outage=lambda: clock.advance(0.5)
    )

    held = backend.extend([delivery], LEASE)

    assert held == [True]
    assert delivery.lease_until == clock() + LEASE
    assert leased_until(backend, delivery.message_id) == delivery.lease_until


def test_lock_expires_from_retry_time(
    connect: Callable[[], RedisBackend], clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = connect()
    fail_first_attempt(
        monkeypatch,
        backend,
        "acquire_lock",
        landed=False,
        during_outage=lambda: clock.advance(OUTAGE),
    )

    acquired = backend.acquire_lock("leader", "a", LEASE)

    assert acquired is True
    assert backend.lock_holder("leader") == ("a", clock() + LEASE)
