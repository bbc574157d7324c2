"""Malformed message hashes on Redis: dead-lettered with a reason, never a failed script.

Each test writes a corrupt field straight into a message hash, as a bug or
an operator could, and checks that ``exchange`` delivers the valid messages
around it, dead-letters the corrupt one and strands nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sluicegate.backends.redis import RedisBackend
from sluicegate.broker import Action, QueueBounds, Settlement
from sluicegate.message import OutgoingMessage, new_id
from sluicegate.store import JobState, NewJob

from .test_retried_clock import Clock

BOUNDS = QueueBounds()
LEASE = 30.0

#: Corruptions of a ready message: field, new value (None deletes it), expected reason.
READY_CASES = [
    ("fence", b"abc", "corrupt message: fence is not a non-negative integer (abc)"),
    ("fence", None, "corrupt message: fence is missing"),
    ("deliveries", b"two", "corrupt message: deliveries is not a non-negative integer (two)"),
    ("deliveries", b"-1", "corrupt message: deliveries is not a non-negative integer (-1)"),
    ("body", None, "corrupt message: body is missing"),
    ("enqueued_at", b"nan", "corrupt message: enqueued_at is not a number (nan)"),
    ("enqueued_at", b"0x10", "corrupt message: enqueued_at is not a number (0x10)"),
]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def backend(redis_url: str, clock: Clock) -> Iterator[RedisBackend]:
    opened = RedisBackend(redis_url, clock=clock)
    yield opened
    opened.close()


def new_job(clock: Clock, delay: float = 0.0) -> NewJob:
    message = OutgoingMessage(new_id(), "q", b"{}", 0, clock() + delay, clock())
    return NewJob(message, "tests.task")


def corrupt(backend: RedisBackend, message_id: str, field: str, value: bytes | None) -> None:
    key = backend.layout.message(message_id)
    if value is None:
        assert backend._client.hdel(key, field) == 1
    else:
        backend._client.hset(key, field, value)


def enqueue(backend: RedisBackend, clock: Clock, count: int) -> list[str]:
    jobs = [new_job(clock) for _ in range(count)]
    backend.enqueue_jobs(jobs, BOUNDS)
    clock.advance(0.001)  # Later jobs sort after these in the ready set.
    return [job.message.id for job in jobs]


def dead_reasons(backend: RedisBackend) -> dict[str, str]:
    return {letter.message_id: letter.reason for letter in backend.dead_letters("q")}


def test_corrupt_ready_messages_dead_lettered(backend: RedisBackend, clock: Clock) -> None:
    corrupted = enqueue(backend, clock, len(READY_CASES))
    missing = enqueue(backend, clock, 1)[0]
    valid = enqueue(backend, clock, 3)
    for message_id, (field, value, _) in zip(corrupted, READY_CASES, strict=True):
        corrupt(backend, message_id, field, value)
    backend._client.delete(backend.layout.message(missing))

    deliveries = backend.reserve(["q"], 10, LEASE, "w1")

    assert sorted(d.message_id for d in deliveries) == sorted(valid)
    expected = {
        message_id: reason
        for message_id, (_, _, reason) in zip(corrupted, READY_CASES, strict=True)
    }
    assert dead_reasons(backend) == expected
    assert backend.length("q") == len(valid)
    for message_id, reason in expected.items():
        record = backend.get_job(message_id)
        assert record is not None
        assert record.state is JobState.FAILED
        assert record.error is not None
        assert record.error.message == reason
    missing_record = backend.get_job(missing)
    assert missing_record is not None
    assert missing_record.state is JobState.FAILED
    assert backend.stats("q")[0].ready == 0


def test_corrupt_messages_do_not_use_up_limit(backend: RedisBackend, clock: Clock) -> None:
    corrupted = enqueue(backend, clock, 4)
    valid = enqueue(backend, clock, 2)
    for message_id in corrupted:
        corrupt(backend, message_id, "fence", b"abc")

    first = backend.reserve(["q"], 1, LEASE, "w1")
    second = backend.reserve(["q"], 1, LEASE, "w1")

    assert [d.message_id for d in first + second] == valid
    assert set(dead_reasons(backend)) == set(corrupted)


def test_message_key_of_other_type_removed(backend: RedisBackend, clock: Clock) -> None:
    wrong, valid = enqueue(backend, clock, 2)
    key = backend.layout.message(wrong)
    backend._client.delete(key)
    backend._client.set(key, b"not a hash")

    deliveries = backend.reserve(["q"], 10, LEASE, "w1")

    assert [d.message_id for d in deliveries] == [valid]
    assert backend.length("q") == 1
    assert dead_reasons(backend) == {}


def test_expired_lease_with_corrupt_order_at(backend: RedisBackend, clock: Clock) -> None:
    (message_id,) = enqueue(backend, clock, 1)
    backend.reserve(["q"], 1, LEASE, "w1")
    corrupt(backend, message_id, "order_at", b"later")
    clock.advance(LEASE + 1)

    assert backend.reserve(["q"], 1, LEASE, "w2") == []
    assert dead_reasons(backend) == {
        message_id: "corrupt message: order_at is not a number (later)"
    }
    assert backend.length("q") == 0


def test_due_message_with_corrupt_priority(backend: RedisBackend, clock: Clock) -> None:
    delayed = new_job(clock, delay=10)
    backend.enqueue_jobs([delayed], BOUNDS)
    valid = enqueue(backend, clock, 1)
    corrupt(backend, delayed.message.id, "priority", b"high")
    clock.advance(11)

    deliveries = backend.reserve(["q"], 10, LEASE, "w1")

    assert [d.message_id for d in deliveries] == valid
    assert dead_reasons(backend) == {
        delayed.message.id: "corrupt message: priority is not a number (high)"
    }


@pytest.mark.parametrize("action", [Action.RELEASE, Action.RETRY, Action.DEFER])
def test_requeue_with_corrupt_priority(backend: RedisBackend, clock: Clock, action: Action) -> None:
    (message_id,) = enqueue(backend, clock, 1)
    (delivery,) = backend.reserve(["q"], 1, LEASE, "w1")
    corrupt(backend, message_id, "priority", None)

    settled = backend.settle([Settlement(delivery, action)])

    assert settled == [True]
    assert dead_reasons(backend) == {message_id: "corrupt message: priority is missing"}
    assert backend.length("q") == 0


def test_retry_dead_keeps_corrupt_letter(backend: RedisBackend, clock: Clock) -> None:
    corrupted, repaired = enqueue(backend, clock, 2)
    for message_id in (corrupted, repaired):
        corrupt(backend, message_id, "fence", b"abc")
    backend.reserve(["q"], 10, LEASE, "w1")
    corrupt(backend, corrupted, "priority", b"high")
    corrupt(backend, repaired, "fence", b"1")

    retried = backend.retry_dead("q")

    assert retried == 1
    assert set(dead_reasons(backend)) == {corrupted}
    assert [d.message_id for d in backend.reserve(["q"], 10, LEASE, "w1")] == [repaired]


def test_stats_ignores_corrupt_order_at(backend: RedisBackend, clock: Clock) -> None:
    (message_id,) = enqueue(backend, clock, 1)
    backend.reserve(["q"], 1, LEASE, "w1")
    corrupt(backend, message_id, "order_at", b"later")
    clock.advance(LEASE + 1)

    (stats,) = backend.stats("q")

    assert stats.ready == 1
    assert stats.oldest_ready_age is None
