"""Reserve order: FIFO within a priority, higher priorities first, delays respected."""

from __future__ import annotations

from conformance_backends import FakeClock, message

from sluicegate.backends.base import Backend
from sluicegate.broker import QueueBounds

BOUNDS = QueueBounds()
LEASE = 30.0


def reserve_all(backend: Backend, queue: str = "q") -> list[str]:
    """Reserve every ready message one at a time; return their ids in order."""
    ids = []
    while deliveries := backend.reserve([queue], 1, LEASE, "w1"):
        ids.append(deliveries[0].message_id)
    return ids


def test_fifo_one_call_each(backend: Backend, clock: FakeClock) -> None:
    sent = []
    for _ in range(5):
        outgoing = message(clock)
        backend.publish([outgoing], BOUNDS)
        sent.append(outgoing.id)
        clock.advance(0.001)

    assert reserve_all(backend) == sent


def test_fifo_same_instant(backend: Backend, clock: FakeClock) -> None:
    batch = [message(clock) for _ in range(5)]
    backend.publish(batch[:2], BOUNDS)
    for outgoing in batch[2:]:
        backend.publish([outgoing], BOUNDS)

    assert reserve_all(backend) == [m.id for m in batch]


def test_fifo_batch_reserve(backend: Backend, clock: FakeClock) -> None:
    batch = [message(clock) for _ in range(4)]
    backend.publish(batch, BOUNDS)

    deliveries = backend.reserve(["q"], 10, LEASE, "w1")

    assert [d.message_id for d in deliveries] == [m.id for m in batch]


def test_priority_higher_first(backend: Backend, clock: FakeClock) -> None:
    low = message(clock, priority=-5)
    normal = message(clock, priority=0)
    high = message(clock, priority=10)
    for outgoing in (low, normal, high):
        backend.publish([outgoing], BOUNDS)
        clock.advance(0.001)

    assert reserve_all(backend) == [high.id, normal.id, low.id]


def test_priority_fifo_within(backend: Backend, clock: FakeClock) -> None:
    first_high = message(clock, priority=3)
    backend.publish([first_high], BOUNDS)
    clock.advance(1)
    low = message(clock, priority=0)
    backend.publish([low], BOUNDS)
    clock.advance(1)
    second_high = message(clock, priority=3)
    backend.publish([second_high], BOUNDS)

    assert reserve_all(backend) == [first_high.id, second_high.id, low.id]


def test_reserve_limit(backend: Backend, clock: FakeClock) -> None:
    backend.publish([message(clock) for _ in range(5)], BOUNDS)

    first = backend.reserve(["q"], 2, LEASE, "w1")
    rest = backend.reserve(["q"], 10, LEASE, "w1")

    assert len(first) == 2
    assert len(rest) == 3


def test_reserve_other_queue_empty(backend: Backend, clock: FakeClock) -> None:
    backend.publish([message(clock, queue="a")], BOUNDS)

    assert backend.reserve(["b"], 10, LEASE, "w1") == []


def test_reserve_several_queues(backend: Backend, clock: FakeClock) -> None:
    in_a = message(clock, queue="a")
    in_b = message(clock, queue="b")
    backend.publish([in_a], BOUNDS)
    backend.publish([in_b], BOUNDS)

    deliveries = backend.reserve(["a", "b"], 10, LEASE, "w1")

    assert {d.message_id for d in deliveries} == {in_a.id, in_b.id}
    assert {d.queue for d in deliveries} == {"a", "b"}


def test_delay_not_before_due(backend: Backend, clock: FakeClock) -> None:
    backend.publish([message(clock, delay=10)], BOUNDS)

    assert backend.reserve(["q"], 1, LEASE, "w1") == []
    clock.advance(9.5)
    assert backend.reserve(["q"], 1, LEASE, "w1") == []


def test_delay_reserved_after_due(backend: Backend, clock: FakeClock) -> None:
    delayed = message(clock, delay=10)
    backend.publish([delayed], BOUNDS)
    clock.advance(10.5)

    deliveries = backend.reserve(["q"], 1, LEASE, "w1")

    assert [d.message_id for d in deliveries] == [delayed.id]
    assert deliveries[0].delivery_count == 1


def test_delay_orders_by_ready_time(backend: Backend, clock: FakeClock) -> None:
    later = message(clock, delay=20)
    sooner = message(clock, delay=10)
    backend.publish([later], BOUNDS)
    backend.publish([sooner], BOUNDS)
    clock.advance(30)

    assert reserve_all(backend) == [sooner.id, later.id]


def test_next_due_delay(backend: Backend, clock: FakeClock) -> None:
    assert backend.next_due() is None

    backend.publish([message(clock, delay=10)], BOUNDS)

    assert backend.next_due() == clock() + 10


def test_next_due_lease(backend: Backend, clock: FakeClock) -> None:
    backend.publish([message(clock)], BOUNDS)
    backend.reserve(["q"], 1, LEASE, "w1")

    assert backend.next_due() == clock() + LEASE
