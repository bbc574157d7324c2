"""What the Redis backend adds to the conformance suite: URLs, key layout, reconnects."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from sluicegate.backends import open_backend
from sluicegate.backends.redis import RedisBackend, describe, split_prefix
from sluicegate.broker import Action, QueueBounds, Settlement
from sluicegate.errors import ConfigurationError, StoreUnavailable
from sluicegate.message import OutgoingMessage, new_id
from sluicegate.store import JobState, JobUpdate, NewJob

from .conftest import RedisServer, free_port

BOUNDS = QueueBounds()
LEASE = 30.0


def message(queue: str = "q", delay: float = 0.0) -> OutgoingMessage:
    now = time.time()
    return OutgoingMessage(new_id(), queue, b"{}", 0, now + delay, now)


@pytest.fixture
def backend(redis_url: str) -> Iterator[RedisBackend]:
    opened = RedisBackend(redis_url)
    yield opened
    opened.close()


def test_split_prefix_keeps_other_options() -> None:
    url, prefix = split_prefix("redis://host:6380/2?prefix=shop&socket_timeout=5")

    assert url == "redis://host:6380/2?socket_timeout=5"
    assert prefix == "shop"


def test_split_prefix_absent() -> None:
    assert split_prefix("redis://host/0") == ("redis://host/0", None)


def test_describe_hides_password() -> None:
    assert describe("redis://admin:hunter2@db.internal:6380/3") == "redis://db.internal:6380/3"


def test_describe_defaults() -> None:
    assert describe("redis://localhost") == "redis://localhost:6379/0"


@pytest.mark.parametrize("prefix", ["", "a{b", "a}b"])
def test_prefix_rejected(prefix: str) -> None:
    with pytest.raises(ConfigurationError, match="prefix"):
        RedisBackend("redis://127.0.0.1:6379/0", prefix=prefix)


def test_open_backend_redis() -> None:
    backend = open_backend("redis://127.0.0.1:6379/0?prefix=sgtest-open", durable=False)
    try:
        assert isinstance(backend, RedisBackend)
        assert backend.layout.prefix == "sgtest-open"
    finally:
        backend.close()


def test_keys_share_one_slot(backend: RedisBackend) -> None:
    jobs = [NewJob(message(), "t", idempotency_key="k1"), NewJob(message(delay=60), "t")]
    backend.enqueue_jobs(jobs, BOUNDS)
    first, *_ = backend.reserve(["q"], 1, LEASE, "w1")
    update = JobUpdate(JobState.SUCCEEDED, result=b"1")
    backend.settle([Settlement(first, Action.ACK, update)])
    backend.compare_and_set("breaker:x", None, b"closed")
    backend.acquire_lock("leader", "a", 10)

    keys = list(backend._client.scan_iter(match=backend.layout.pattern()))

    assert len(keys) >= 8
    assert {key_slot(key) for key in keys} == {key_slot(backend.layout.tag.encode())}


def test_enqueue_retried_creates_once(backend: RedisBackend) -> None:
    new = NewJob(message(), "t")

    first = backend.enqueue_jobs([new], BOUNDS)
    again = backend.enqueue_jobs([new], BOUNDS)

    assert first[0].created is True
    assert again[0].job_id == new.message.id
    assert backend.length("q") == 1


def test_exchange_retried_returns_first_reply(
    backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend.publish([message(), message()], BOUNDS)
    monkeypatch.setattr("sluicegate.backends.redis.os.urandom", lambda size: b"\x01" * size)

    first = backend.reserve(["q"], 1, LEASE, "w1")
    retried = backend.reserve(["q"], 1, LEASE, "w1")

    assert [d.message_id for d in retried] == [d.message_id for d in first]
    assert [d.fence for d in retried] == [d.fence for d in first]
    assert backend.stats("q")[0].running == 1


def test_dropped_connection_retried(
    backend: RedisBackend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    backend.publish([message()], BOUNDS)
    script = backend._scripts["length"]
    failures = [redis.ConnectionError("Connection reset by peer")]

    def drop_once(**kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return script(**kwargs)

    monkeypatch.setitem(backend._scripts, "length", drop_once)
    with caplog.at_level(logging.INFO, logger="sluicegate.backends.redis"):
        length = backend.length("q")

    assert length == 1
    assert "redis connection lost, reconnecting address=redis://127.0.0.1:6379/0" in caplog.text
    assert "redis connection restored" in caplog.text


def test_idle_connection_killed(backend: RedisBackend, redis_url: str) -> None:
    backend.publish([message()], BOUNDS)
    own_id = backend._client.client_id()
    killer = redis.Redis.from_url(redis_url.split("?")[0])
    try:
        assert killer.client_kill_filter(_id=own_id) == 1
    finally:
        killer.close()

    assert backend.length("q") == 1


def test_unreachable_raises_store_unavailable() -> None:
    port = free_port()
    backend = RedisBackend(f"redis://user:hunter2@127.0.0.1:{port}/0", reconnect_timeout=0.3)
    try:
        with pytest.raises(StoreUnavailable) as caught:
            backend.ping()
    finally:
        backend.close()

    assert f"127.0.0.1:{port}" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_job_wait_wakes_on_result(backend: RedisBackend) -> None:
    new = NewJob(message(), "t")
    backend.enqueue_jobs([new], BOUNDS)
    (delivery,) = backend.reserve(["q"], 1, LEASE, "w1")
    listener = backend.result_listener()
    try:
        update = JobUpdate(JobState.SUCCEEDED, result=b"1")
        backend.settle([Settlement(delivery, Action.ACK, update)])

        assert listener.wait(5.0) is True
        assert listener.wait(0.01) is False
    finally:
        listener.close()


def test_purge_expired_deletes_key(backend: RedisBackend) -> None:
    new = NewJob(message(), "t", idempotency_key="order-9")
    backend.enqueue_jobs([new], BOUNDS)
    (delivery,) = backend.reserve(["q"], 1, LEASE, "w1")
    update = JobUpdate(JobState.SUCCEEDED, result=b"1", retention=100.0)
    backend.settle([Settlement(delivery, Action.ACK, update)])

    purged = backend.purge_expired(time.time() + 101)

    assert purged == 1
    assert backend._client.exists(backend.layout.job(new.message.id)) == 0
    assert backend._client.exists(f"{backend.layout.tag}:idem:order-9") == 0


def test_exchange_over_chunk_size(backend: RedisBackend) -> None:
    # The exchange script sends its batched ZADD, ZREM and DEL 1,000 values at a
    # time, because Lua's unpack fails beyond about 8,000.
    count = 2_500
    jobs = [NewJob(message(), "t") for _ in range(count)]
    backend.enqueue_jobs(jobs, QueueBounds(max_length=count))
    _, deliveries = backend.exchange([], ["q"], count, LEASE, "w1")
    update = JobUpdate(JobState.SUCCEEDED, result=b"1", retention=100.0)

    settled, again = backend.exchange(
        [Settlement(delivery, Action.ACK, update) for delivery in deliveries], ["q"], 1, LEASE, "w1"
    )
    records = backend.get_jobs([job.message.id for job in jobs])
    client, tag = backend._client, backend.layout.tag

    assert len(deliveries) == count
    assert settled == [True] * count
    assert again == []
    assert backend.length("q") == 0
    assert {record.state for record in records} == {JobState.SUCCEEDED}
    assert client.zcard(f"{tag}:q:q:leased") == 0
    assert client.zcard(f"{tag}:expiring") == count
    assert client.exists(*(backend.layout.message(job.message.id) for job in jobs)) == 0


def test_exchange_same_delivery_twice(backend: RedisBackend) -> None:
    new = NewJob(message(), "t")
    backend.enqueue_jobs([new], BOUNDS)
    (delivery,) = backend.reserve(["q"], 1, LEASE, "w1")
    update = JobUpdate(JobState.SUCCEEDED, result=b"1")

    settled = backend.settle([Settlement(delivery, Action.ACK, update)] * 2)
    record = backend.get_job(new.message.id)

    assert settled == [True, False]
    assert record is not None
    assert record.state is JobState.SUCCEEDED
    assert record.version == 3  # enqueue, lease, one settlement


def test_exchange_retry_then_lease_again(backend: RedisBackend) -> None:
    # A retry with no delay makes the message ready, and the same call leases it
    # again: the batched ZREM of the old lease must not remove the new one.
    new = NewJob(message(), "t")
    backend.enqueue_jobs([new], BOUNDS)
    (delivery,) = backend.reserve(["q"], 1, LEASE, "w1")
    update = JobUpdate(JobState.RETRYING, retention=100.0)

    settled, (again,) = backend.exchange(
        [Settlement(delivery, Action.RETRY, update)], ["q"], 1, LEASE, "w1"
    )
    (stats,) = backend.stats("q")
    acked = backend.settle([Settlement(again, Action.ACK)])

    assert settled == [True]
    assert again.message_id == delivery.message_id
    assert again.fence == delivery.fence + 1
    assert again.delivery_count == 2
    assert stats.running == 1
    assert acked == [True]


def test_sentinel_url(private_sentinel: str) -> None:
    backend = RedisBackend(private_sentinel, reconnect_timeout=5.0)
    try:
        new = NewJob(message(), "t")
        backend.enqueue_jobs([new], BOUNDS)
        (delivery,) = backend.reserve(["q"], 1, LEASE, "w1")
        update = JobUpdate(JobState.SUCCEEDED, result=b"1")

        settled = backend.settle([Settlement(delivery, Action.ACK, update)])
        record = backend.get_job(new.message.id)
    finally:
        backend.delete_all()
        backend.close()

    assert settled == [True]
    assert record is not None
    assert record.state is JobState.SUCCEEDED
    assert backend.address.startswith("redis+sentinel://127.0.0.1:")


def test_maxmemory_raises_store_unavailable(private_redis: RedisServer) -> None:
    backend = RedisBackend(f"{private_redis.url}?prefix=sgoom", reconnect_timeout=30.0)
    admin = redis.Redis(port=private_redis.port, password=private_redis.password)
    try:
        backend.enqueue_jobs([NewJob(message(), "t")], BOUNDS)
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)  # Below what the server uses: every write is refused.
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="maxmemory"):
            backend.enqueue_jobs([NewJob(message(), "t")], BOUNDS)

        assert time.monotonic() - started < 10.0  # Raised at once, not after the retry window.
        admin.config_set("maxmemory", 0)
        assert backend.length("q") == 1
    finally:
        admin.close()
        backend.close()


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0?prefix=sgopt&bogus=1",
        "redis+cluster://127.0.0.1:6379/?prefix=sgopt&bogus=1",
    ],
)
def test_unknown_url_option_rejected(url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"invalid option in Redis URL .*bogus"):
        RedisBackend(url)
