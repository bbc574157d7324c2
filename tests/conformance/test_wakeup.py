"""Wake-up: a listener turns readable when another connection makes messages ready."""

from __future__ import annotations

import select
from collections.abc import Callable

from conformance_backends import FakeClock, job, message

from sluicegate.backends.base import Backend
from sluicegate.broker import Action, QueueBounds, Settlement
from sluicegate.store import JobState, JobUpdate

BOUNDS = QueueBounds()

#: Upper bound, in seconds, on waiting for a wake-up that should come at once.
WAKE_TIMEOUT = 5.0


def is_readable(fileno: int, timeout: float) -> bool:
    readable, _, _ = select.select([fileno], [], [], timeout)
    return bool(readable)


def test_listener_idle(backend: Backend) -> None:
    listener = backend.listener()
    try:
        assert is_readable(listener.fileno(), 0.0) is False
        assert listener.wait(0.01) is False
    finally:
        listener.close()


def test_listener_wakes_on_publish(
    backend: Backend, connect: Callable[[], Backend], clock: FakeClock
) -> None:
    producer = connect()
    listener = backend.listener()
    try:
        producer.publish([message(clock)], BOUNDS)

        assert is_readable(listener.fileno(), WAKE_TIMEOUT) is True
    finally:
        listener.close()


def test_listener_wakes_on_enqueue(
    backend: Backend, connect: Callable[[], Backend], clock: FakeClock
) -> None:
    producer = connect()
    listener = backend.listener()
    try:
        producer.enqueue_jobs([job(clock)], BOUNDS)

        assert listener.wait(WAKE_TIMEOUT) is True
    finally:
        listener.close()


def test_late_listener_wakes_on_enqueue(
    backend: Backend, connect: Callable[[], Backend], clock: FakeClock
) -> None:
    # The producer enqueued while no listener was bound, and the SQLite backend caches
    # that it found none. A listener bound later must still be woken by the next enqueue.
    producer = connect()
    producer.enqueue_jobs([job(clock)], BOUNDS)
    producer.enqueue_jobs([job(clock)], BOUNDS)
    listener = backend.listener()
    try:
        producer.enqueue_jobs([job(clock)], BOUNDS)

        assert listener.wait(WAKE_TIMEOUT) is True
    finally:
        listener.close()


def test_listener_drain(backend: Backend, connect: Callable[[], Backend], clock: FakeClock) -> None:
    producer = connect()
    listener = backend.listener()
    try:
        producer.publish([message(clock)], BOUNDS)
        assert is_readable(listener.fileno(), WAKE_TIMEOUT) is True

        listener.drain()

        assert is_readable(listener.fileno(), 0.0) is False
    finally:
        listener.close()


def test_listener_wakes_on_retry(
    backend: Backend, connect: Callable[[], Backend], clock: FakeClock
) -> None:
    backend.publish([message(clock)], BOUNDS)
    (delivery,) = backend.reserve(["q"], 1, 30.0, "w1")
    settler = connect()
    listener = backend.listener()
    try:
        settler.settle([Settlement(delivery, Action.RETRY)])

        assert listener.wait(WAKE_TIMEOUT) is True
    finally:
        listener.close()


def test_result_listener_wakes(
    backend: Backend, connect: Callable[[], Backend], clock: FakeClock
) -> None:
    backend.enqueue_jobs([job(clock)], BOUNDS)
    (delivery,) = backend.reserve(["q"], 1, 30.0, "w1")
    settler = connect()
    listener = backend.result_listener()
    try:
        update = JobUpdate(JobState.SUCCEEDED, result=b"1")
        settler.settle([Settlement(delivery, Action.ACK, update)])

        assert listener.wait(WAKE_TIMEOUT) is True
    finally:
        listener.close()
