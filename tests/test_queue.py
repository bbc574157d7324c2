"""The plain queue level: publish, consume, ack, nack, extend and dead letters."""

from __future__ import annotations

import time

import pytest

from sluicegate import App, EncodeError, LeaseLost, Message, PayloadTooLarge, QueueFull
from sluicegate.errors import SluicegateError
from sluicegate.message import OutgoingMessage, new_id

#: Upper bound, in seconds, on waiting for a message that is ready already.
READY_TIMEOUT = 5.0

#: How long to wait for a message that must not arrive.
ABSENT_TIMEOUT = 0.05


def next_message(app: App, queue: str = "jobs", **options: object) -> Message:
    """Consume one message, failing the test if none comes within READY_TIMEOUT."""
    messages = app.queue(queue).consume(timeout=READY_TIMEOUT, **options)
    try:
        return next(messages)
    except StopIteration:
        pytest.fail(f"no message on queue {queue!r} within {READY_TIMEOUT}s")
    finally:
        messages.close()


def consume_all(app: App, queue: str = "jobs", **options: object) -> list[Message]:
    return list(app.queue(queue).consume(timeout=ABSENT_TIMEOUT, **options))


def test_publish_consume_ack(app: App) -> None:
    queue = app.queue("jobs")
    message_id = queue.publish({"n": 1})

    message = next_message(app)
    message.ack()

    assert message.id == message_id
    assert message.payload == {"n": 1}
    assert message.delivery_count == 1
    assert queue.stats().ready == 0
    assert queue.stats().running == 0
    assert consume_all(app) == []


def test_publish_keeps_types(app: App) -> None:
    app.queue("jobs").publish({"when": (1, 2), "raw": b"\x00"})

    message = next_message(app)

    assert message.payload == {"when": (1, 2), "raw": b"\x00"}
    assert type(message.payload["when"]) is tuple


def test_consume_fifo(app: App) -> None:
    queue = app.queue("jobs")
    for n in range(3):
        queue.publish(n)

    payloads = [message.payload for message in consume_all(app)]

    assert payloads == [0, 1, 2]


def test_consume_priority(app: App) -> None:
    queue = app.queue("jobs")
    queue.publish("low")
    queue.publish("high", priority=5)

    assert [message.payload for message in consume_all(app)] == ["high", "low"]


def test_consume_timeout_empty(app: App) -> None:
    started = time.monotonic()

    messages = consume_all(app)

    assert messages == []
    assert time.monotonic() - started < READY_TIMEOUT


def test_nack_redelivers(app: App) -> None:
    app.queue("jobs").publish("x")
    first = next_message(app)

    first.nack()
    second = next_message(app)

    assert second.id == first.id
    assert second.delivery_count == 2


def test_nack_delay_hides(app: App) -> None:
    queue = app.queue("jobs")
    queue.publish("x")
    message = next_message(app)

    message.nack(delay=3600)

    assert consume_all(app) == []
    assert queue.stats().delayed == 1
    assert queue.stats().ready == 0


def test_ack_twice_rejected(app: App) -> None:
    app.queue("jobs").publish("x")
    message = next_message(app)
    message.ack()

    with pytest.raises(SluicegateError):
        message.ack()


def test_extend_lease(app: App) -> None:
    app.queue("jobs").publish("x")
    message = next_message(app, lease=30)
    before = message.delivery.lease_until

    message.extend(3600)

    assert message.delivery.lease_until > before + 3000


def test_extend_after_ack(app: App) -> None:
    app.queue("jobs").publish("x")
    message = next_message(app)
    message.ack()

    with pytest.raises(LeaseLost):
        message.extend(30)


def test_garbage_dead_lettered(app: App) -> None:
    queue = app.queue("jobs")
    now = time.time()
    garbage = OutgoingMessage(new_id(), "jobs", b"\xff not json", 0, now, now)
    app.backend.publish([garbage], app.bounds("jobs"))
    queue.publish("good")

    delivered = consume_all(app)
    letters = queue.dead_letters()

    assert [message.payload for message in delivered] == ["good"]
    assert [letter.message_id for letter in letters] == [garbage.id]
    assert letters[0].reason.startswith("undecodable")
    assert letters[0].body == b"\xff not json"


def test_max_deliveries_dead_letter(app: App) -> None:
    queue = app.queue("jobs")
    queue.publish("poison")

    for _ in range(2):
        next_message(app, max_deliveries=2).nack()
    letters = queue.dead_letters()

    assert consume_all(app) == []
    assert len(letters) == 1
    assert letters[0].delivery_count == 2
    assert "2 deliveries" in letters[0].reason


def test_dead_letter_retry_purge(app: App) -> None:
    queue = app.queue("jobs")
    queue.publish("a")
    queue.publish("b")
    for message in consume_all(app):
        message.dead_letter("manual")

    retried = queue.retry_dead([queue.dead_letters()[0].message_id])
    purged = queue.purge_dead()

    assert retried == 1
    assert purged == 1
    assert queue.dead_letters() == []
    assert [message.payload for message in consume_all(app)] == ["a"]


def test_publish_queue_full(app: App) -> None:
    queue = app.queue("small", max_length=1)
    queue.publish(1)

    with pytest.raises(QueueFull) as caught:
        queue.publish(2)

    assert caught.value.retry_after > 0
    assert queue.stats().ready == 1


def test_publish_max_wait(app: App) -> None:
    queue = app.queue("slow", max_wait=0.001)
    queue.publish(1)  # Nothing consumes it, so it soon exceeds max_wait.
    deadline = time.monotonic() + READY_TIMEOUT

    with pytest.raises(QueueFull) as caught:
        while time.monotonic() < deadline:
            queue.publish(2)

    assert caught.value.reason == "max_wait"


def test_publish_too_large(db_url: str) -> None:
    app = App(db_url, max_message_size=100)
    try:
        with pytest.raises(PayloadTooLarge):
            app.queue("jobs").publish("x" * 200)
    finally:
        app.close()


def test_publish_unencodable(app: App) -> None:
    with pytest.raises(EncodeError) as caught:
        app.queue("jobs").publish({"c": complex(1, 1)})

    assert caught.value.path == "payload['c']"
