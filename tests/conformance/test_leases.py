"""Leases: expiry and redelivery, extension, and fencing of stale deliveries."""

from __future__ import annotations

from conformance_backends import FakeClock, job, message

from sluicegate.backends.base import Backend
from sluicegate.broker import Action, QueueBounds, Settlement
from sluicegate.message import Delivery
from sluicegate.store import JobState, JobUpdate

BOUNDS = QueueBounds()
LEASE = 30.0


def reserve_one(backend: Backend, worker: str = "w1") -> Delivery:
    deliveries = backend.reserve(["q"], 1, LEASE, worker)
    assert len(deliveries) == 1
    return deliveries[0]


def test_lease_hides_message(backend: Backend, clock: FakeClock) -> None:
    backend.publish([message(clock)], BOUNDS)
    reserve_one(backend)
    clock.advance(LEASE - 1)

    assert backend.reserve(["q"], 1, LEASE, "w2") == []


def test_lease_until(backend: Backend, clock: FakeClock) -> None:
    backend.publish([message(clock)], BOUNDS)

    delivery = reserve_one(backend)

    assert delivery.lease_until == clock() + LEASE


def test_lease_expiry_redelivers(backend: Backend, clock: FakeClock) -> None:
    outgoing = message(clock)
    backend.publish([outgoing], BOUNDS)
    first = reserve_one(backend, "w1")
    clock.advance(LEASE + 1)

    second = reserve_one(backend, "w2")

    assert second.message_id == outgoing.id
    assert second.fence > first.fence
    assert first.delivery_count == 1
    assert second.delivery_count == 2


def test_redelivery_keeps_body(backend: Backend, clock: FakeClock) -> None:
    backend.publish([message(clock, body=b'{"n": 1}')], BOUNDS)
    reserve_one(backend)
    clock.advance(LEASE + 1)

    assert reserve_one(backend).body == b'{"n": 1}'


def test_expired_job_back_to_queued(backend: Backend, clock: FakeClock) -> None:
    new = job(clock)
    backend.enqueue_jobs([new], BOUNDS)
    reserve_one(backend)
    clock.advance(LEASE + 1)

    second = reserve_one(backend)
    record = backend.get_job(new.message.id)

    assert second.delivery_count == 2
    assert record is not None
    assert record.state is JobState.RUNNING
    assert record.attempts == 2


def test_extend_keeps_lease(backend: Backend, clock: FakeClock) -> None:
    backend.publish([message(clock)], BOUNDS)
    delivery = reserve_one(backend)
    extended_at = clock.advance(LEASE - 5)

    held = backend.extend([delivery], LEASE)
    clock.advance(20)

    assert held == [True]
    assert delivery.lease_until == extended_at + LEASE
    assert backend.reserve(["q"], 1, LEASE, "w2") == []


def test_extend_after_expiry_rejected(backend: Backend, clock: FakeClock) -> None:
    backend.publish([message(clock)], BOUNDS)
    delivery = reserve_one(backend)
    clock.advance(LEASE + 1)

    assert backend.extend([delivery], LEASE) == [False]


def test_extend_old_fence_rejected(backend: Backend, clock: FakeClock) -> None:
    backend.publish([message(clock)], BOUNDS)
    stale = reserve_one(backend, "w1")
    clock.advance(LEASE + 1)
    current = reserve_one(backend, "w2")
    lease_before = current.lease_until

    assert backend.extend([stale], LEASE * 10) == [False]
    assert backend.extend([current], LEASE) == [True]
    assert current.lease_until == lease_before


def test_settle_old_fence_rejected(backend: Backend, clock: FakeClock) -> None:
    new = job(clock)
    backend.enqueue_jobs([new], BOUNDS)
    stale = reserve_one(backend, "w1")
    clock.advance(LEASE + 1)
    current = reserve_one(backend, "w2")
    stale_update = JobUpdate(JobState.SUCCEEDED, result=b'"stale"')

    settled = backend.settle([Settlement(stale, Action.ACK, stale_update)])
    record = backend.get_job(new.message.id)

    assert settled == [False]
    assert record is not None
    assert record.state is JobState.RUNNING
    assert record.result is None
    assert backend.length("q") == 1
    assert backend.extend([current], LEASE) == [True]


def test_settle_new_fence_wins(backend: Backend, clock: FakeClock) -> None:
    new = job(clock)
    backend.enqueue_jobs([new], BOUNDS)
    stale = reserve_one(backend, "w1")
    clock.advance(LEASE + 1)
    current = reserve_one(backend, "w2")
    current_update = JobUpdate(JobState.SUCCEEDED, result=b'"current"')
    backend.settle([Settlement(current, Action.ACK, current_update)])
    stale_update = JobUpdate(JobState.FAILED, result=b'"stale"')

    settled = backend.settle([Settlement(stale, Action.ACK, stale_update)])
    record = backend.get_job(new.message.id)

    assert settled == [False]
    assert record is not None
    assert record.state is JobState.SUCCEEDED
    assert record.result == b'"current"'


def test_settle_after_expiry_rejected(backend: Backend, clock: FakeClock) -> None:
    new = job(clock)
    backend.enqueue_jobs([new], BOUNDS)
    delivery = reserve_one(backend)
    clock.advance(LEASE + 1)
    update = JobUpdate(JobState.SUCCEEDED, result=b"1")

    settled = backend.settle([Settlement(delivery, Action.ACK, update)])
    record = backend.get_job(new.message.id)
    redelivered = reserve_one(backend)

    assert settled == [False]
    assert record is not None
    assert record.state is not JobState.SUCCEEDED
    assert record.result is None
    assert redelivered.message_id == new.message.id
    assert redelivered.delivery_count == 2


def test_settle_twice_rejected(backend: Backend, clock: FakeClock) -> None:
    backend.publish([message(clock)], BOUNDS)
    delivery = reserve_one(backend)

    first = backend.settle([Settlement(delivery, Action.ACK)])
    second = backend.settle([Settlement(delivery, Action.ACK)])

    assert first == [True]
    assert second == [False]


def test_settle_each_in_batch(backend: Backend, clock: FakeClock) -> None:
    backend.publish([message(clock), message(clock)], BOUNDS)
    stale, _ = backend.reserve(["q"], 2, LEASE, "w1")
    clock.advance(LEASE + 1)
    fresh = backend.reserve(["q"], 2, LEASE, "w2")

    settled = backend.settle([Settlement(stale, Action.ACK), Settlement(fresh[0], Action.ACK)])

    assert settled == [False, True]


def test_exchange_settles_and_reserves(backend: Backend, clock: FakeClock) -> None:
    first, second = message(clock), message(clock)
    backend.publish([first, second], BOUNDS)
    delivery = reserve_one(backend)

    settled, deliveries = backend.exchange(
        [Settlement(delivery, Action.ACK)], ["q"], 5, LEASE, "w1"
    )

    assert settled == [True]
    assert [d.message_id for d in deliveries] == [second.id]
    assert backend.length("q") == 1
