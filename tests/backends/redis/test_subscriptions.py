"""One pub/sub subscription per channel and backend, shared by every waiter on it."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from sluicegate.backends.redis import RedisBackend
from sluicegate.broker import Action, QueueBounds, Settlement
from sluicegate.message import OutgoingMessage, new_id
from sluicegate.store import JobState, JobUpdate, NewJob
from worker.support import wait_until

from .conftest import RedisServer

BOUNDS = QueueBounds()
LEASE = 30.0

#: Upper bound, in seconds, on waiting for a wake-up that should come at once.
WAKE_TIMEOUT = 5.0

#: Upper bound, in seconds, on a lost subscription being restored.
RESTORE_TIMEOUT = 10.0


def message() -> OutgoingMessage:
    now = time.time()
    return OutgoingMessage(new_id(), "q", b"{}", 0, now, now)


@pytest.fixture
def backend(redis_url: str) -> Iterator[RedisBackend]:
    opened = RedisBackend(redis_url)
    yield opened
    opened.close()


def subscribers(client: redis.Redis, channel: str) -> int:
    ((_, count),) = client.pubsub_numsub(channel)
    return int(count)


def test_result_listeners_share_subscription(backend: RedisBackend) -> None:
    backend.enqueue_jobs([NewJob(message(), "t")], BOUNDS)
    (delivery,) = backend.reserve(["q"], 1, LEASE, "w1")
    listeners = [backend.result_listener() for _ in range(3)]
    try:
        count = subscribers(backend._client, backend.layout.results_channel)
        listeners[0].close()
        update = JobUpdate(JobState.SUCCEEDED, result=b"1")
        backend.settle([Settlement(delivery, Action.ACK, update)])
        woken = [listener.wait(WAKE_TIMEOUT) for listener in listeners[1:]]
    finally:
        for listener in listeners:
            listener.close()

    assert count == 1
    assert woken == [True, True]


def test_listener_and_result_listener_apart(backend: RedisBackend) -> None:
    wake = backend.listener()
    results = backend.result_listener()
    try:
        backend.publish([message()], BOUNDS)
        woken = wake.wait(WAKE_TIMEOUT)
        results_woken = results.wait(0.05)
    finally:
        wake.close()
        results.close()

    assert woken is True
    assert results_woken is False


def test_closed_backend_subscribes_again(redis_url: str) -> None:
    backend = RedisBackend(redis_url)
    try:
        backend.result_listener().close()
        backend.close()
        listener = backend.result_listener()
        try:
            count = subscribers(backend._client, backend.layout.results_channel)
        finally:
            listener.close()
    finally:
        backend.close()

    assert count == 1


def test_waiter_woken_after_subscription_lost(private_redis: RedisServer) -> None:
    backend = RedisBackend(f"{private_redis.url}?prefix=sghub", reconnect_timeout=RESTORE_TIMEOUT)
    admin = redis.Redis(port=private_redis.port, password=private_redis.password)
    channel = backend.layout.results_channel
    listener = backend.result_listener()
    try:
        killed = admin.client_kill_filter(_type="pubsub")
        woken_by_restore = listener.wait(RESTORE_TIMEOUT)
        wait_until(lambda: subscribers(admin, channel) == 1, RESTORE_TIMEOUT, "resubscription")
        listener.drain()
        admin.publish(channel, "settled")
        woken_by_message = listener.wait(WAKE_TIMEOUT)
    finally:
        listener.close()
        backend.close()
        admin.close()

    assert killed == 1
    assert woken_by_restore is True
    assert woken_by_message is True
