"""Settling: ack, retry with and without delay, release, deferral, and dead letters."""

from __future__ import annotations

from conformance_backends import FakeClock, job, message

from sluicegate.backends.base import Backend
from sluicegate.broker import Action, QueueBounds, Settlement
from sluicegate.message import Delivery
from sluicegate.store import ErrorInfo, JobState, JobUpdate

BOUNDS = QueueBounds()
LEASE = 30.0


def reserve_one(backend: Backend) -> Delivery:
    deliveries = backend.reserve(["q"], 1, LEASE, "w1")
    assert len(deliveries) == 1
    return deliveries[0]


def test_ack_removes(backend: Backend, clock: FakeClock) -> None:
    backend.publish([message(clock)], BOUNDS)
    delivery = reserve_one(backend)

    settled = backend.settle([Settlement(delivery, Action.ACK)])
    clock.advance(LEASE + 1)

    assert settled == [True]
    assert backend.length("q") == 0
    assert backend.reserve(["q"], 1, LEASE, "w1") == []


def test_retry_now_redelivers(backend: Backend, clock: FakeClock) -> None:
    outgoing = message(clock)
    backend.publish([outgoing], BOUNDS)
    first = reserve_one(backend)

    settled = backend.settle([Settlement(first, Action.RETRY)])
    second = reserve_one(backend)

    assert settled == [True]
    assert second.message_id == outgoing.id
    assert second.delivery_count == 2
    assert second.fence > first.fence


def test_retry_now_goes_last(backend: Backend, clock: FakeClock) -> None:
    first, second = message(clock), message(clock)
    backend.publish([first, second], BOUNDS)
    delivery = reserve_one(backend)
    clock.advance(1)

    backend.settle([Settlement(delivery, Action.RETRY)])
    order = [reserve_one(backend).message_id, reserve_one(backend).message_id]

    assert order == [second.id, first.id]


def test_retry_delay_hidden(backend: Backend, clock: FakeClock) -> None:
    backend.publish([message(clock)], BOUNDS)
    delivery = reserve_one(backend)

    settled = backend.settle([Settlement(delivery, Action.RETRY, delay=10)])
    stats = backend.stats("q")[0]
    clock.advance(9)

    assert settled == [True]
    assert stats.delayed == 1
    assert stats.running == 0
    assert backend.reserve(["q"], 1, LEASE, "w1") == []


def test_retry_delay_redelivers(backend: Backend, clock: FakeClock) -> None:
    outgoing = message(clock)
    backend.publish([outgoing], BOUNDS)
    delivery = reserve_one(backend)
    backend.settle([Settlement(delivery, Action.RETRY, delay=10)])
    clock.advance(11)

    redelivered = reserve_one(backend)

    assert redelivered.message_id == outgoing.id
    assert redelivered.delivery_count == 2


def test_retry_delay_next_due(backend: Backend, clock: FakeClock) -> None:
    backend.publish([message(clock)], BOUNDS)
    delivery = reserve_one(backend)

    backend.settle([Settlement(delivery, Action.RETRY, delay=10)])

    assert backend.next_due() == clock() + 10


def test_release_goes_first(backend: Backend, clock: FakeClock) -> None:
    first, second = message(clock), message(clock)
    backend.publish([first, second], BOUNDS)
    delivery = reserve_one(backend)
    clock.advance(1)

    settled = backend.settle([Settlement(delivery, Action.RELEASE)])
    again = reserve_one(backend)

    assert settled == [True]
    assert again.message_id == first.id


def test_release_not_counted(backend: Backend, clock: FakeClock) -> None:
    backend.publish([message(clock)], BOUNDS)
    first = reserve_one(backend)

    backend.settle([Settlement(first, Action.RELEASE)])
    again = reserve_one(backend)

    assert again.delivery_count == 1
    assert again.fence > first.fence


def test_release_job_attempt(backend: Backend, clock: FakeClock) -> None:
    new = job(clock)
    backend.enqueue_jobs([new], BOUNDS)
    delivery = reserve_one(backend)
    update = JobUpdate(JobState.QUEUED, count_attempt=False)

    backend.settle([Settlement(delivery, Action.RELEASE, update)])
    record = backend.get_job(new.message.id)

    assert record is not None
    assert record.state is JobState.QUEUED
    assert record.attempts == 0


def test_defer_hidden_then_redelivered_uncounted(backend: Backend, clock: FakeClock) -> None:
    outgoing = message(clock)
    backend.publish([outgoing], BOUNDS)
    first = reserve_one(backend)

    settled = backend.settle([Settlement(first, Action.DEFER, delay=10)])
    hidden = backend.reserve(["q"], 1, LEASE, "w1")
    due = backend.next_due()
    clock.advance(11)
    again = reserve_one(backend)

    assert settled == [True]
    assert hidden == []
    assert due == first.enqueued_at + 10
    assert again.message_id == outgoing.id
    assert again.delivery_count == 1
    assert again.fence > first.fence


def test_defer_now_goes_last_uncounted(backend: Backend, clock: FakeClock) -> None:
    first, second = message(clock), message(clock)
    backend.publish([first, second], BOUNDS)
    delivery = reserve_one(backend)
    clock.advance(1)

    backend.settle([Settlement(delivery, Action.DEFER)])
    order = [reserve_one(backend), reserve_one(backend)]

    assert [d.message_id for d in order] == [second.id, first.id]
    assert order[1].delivery_count == 1


def test_defer_job_record(backend: Backend, clock: FakeClock) -> None:
    new = job(clock)
    backend.enqueue_jobs([new], BOUNDS)
    delivery = reserve_one(backend)
    note = "deferred by breaker payments"
    update = JobUpdate(JobState.SCHEDULED, note=note, count_attempt=False)

    backend.settle([Settlement(delivery, Action.DEFER, update, delay=5)])
    record = backend.get_job(new.message.id)

    assert record is not None
    assert record.state is JobState.SCHEDULED
    assert record.attempts == 0
    assert record.note == note
    assert record.eta == clock() + 5


def test_defer_stale_fence_rejected(backend: Backend, clock: FakeClock) -> None:
    backend.publish([message(clock)], BOUNDS)
    first = reserve_one(backend)
    clock.advance(LEASE + 1)
    second = reserve_one(backend)

    settled = backend.settle([Settlement(first, Action.DEFER, delay=5)])

    assert settled == [False]
    assert backend.settle([Settlement(second, Action.ACK)]) == [True]


def test_dead_letter_listed(backend: Backend, clock: FakeClock) -> None:
    outgoing = message(clock, body=b'{"n": 7}')
    backend.publish([outgoing], BOUNDS)
    delivery = reserve_one(backend)

    settled = backend.settle([Settlement(delivery, Action.DEAD, reason="poison")])
    letters = backend.dead_letters("q")

    assert settled == [True]
    assert len(letters) == 1
    assert letters[0].message_id == outgoing.id
    assert letters[0].queue == "q"
    assert letters[0].body == b'{"n": 7}'
    assert letters[0].reason == "poison"
    assert letters[0].delivery_count == 1
    assert letters[0].dead_at == clock()


def test_dead_letter_not_reserved(backend: Backend, clock: FakeClock) -> None:
    backend.publish([message(clock)], BOUNDS)
    delivery = reserve_one(backend)

    backend.settle([Settlement(delivery, Action.DEAD, reason="poison")])
    clock.advance(LEASE + 1)

    assert backend.reserve(["q"], 1, LEASE, "w1") == []
    assert backend.length("q") == 0


def test_dead_letters_oldest_first(backend: Backend, clock: FakeClock) -> None:
    backend.publish([message(clock), message(clock)], BOUNDS)
    published_first, published_second = backend.reserve(["q"], 2, LEASE, "w1")
    backend.settle([Settlement(published_second, Action.DEAD, reason="poison")])
    clock.advance(1)
    backend.settle([Settlement(published_first, Action.DEAD, reason="poison")])

    letters = backend.dead_letters("q")
    first_page = backend.dead_letters("q", limit=1)

    assert [letter.message_id for letter in letters] == [
        published_second.message_id,
        published_first.message_id,
    ]
    assert [letter.message_id for letter in first_page] == [published_second.message_id]


def test_retry_dead_requeues(backend: Backend, clock: FakeClock) -> None:
    outgoing = message(clock)
    backend.publish([outgoing], BOUNDS)
    delivery = reserve_one(backend)
    backend.settle([Settlement(delivery, Action.DEAD, reason="poison")])

    count = backend.retry_dead("q")
    again = reserve_one(backend)

    assert count == 1
    assert backend.dead_letters("q") == []
    assert again.message_id == outgoing.id
    assert again.delivery_count == 1


def test_retry_dead_by_id(backend: Backend, clock: FakeClock) -> None:
    still_dead, retried = message(clock), message(clock)
    backend.publish([still_dead, retried], BOUNDS)
    for delivery in backend.reserve(["q"], 2, LEASE, "w1"):
        backend.settle([Settlement(delivery, Action.DEAD, reason="poison")])

    count = backend.retry_dead("q", [retried.id])

    assert count == 1
    assert [letter.message_id for letter in backend.dead_letters("q")] == [still_dead.id]
    assert reserve_one(backend).message_id == retried.id


def test_retry_dead_job_queued(backend: Backend, clock: FakeClock) -> None:
    new = job(clock)
    backend.enqueue_jobs([new], BOUNDS)
    delivery = reserve_one(backend)
    update = JobUpdate(JobState.FAILED, note="gave up")
    backend.settle([Settlement(delivery, Action.DEAD, update, reason="gave up")])

    backend.retry_dead("q")
    record = backend.get_job(new.message.id)

    assert record is not None
    assert record.state is JobState.QUEUED
    assert record.finished_at is None
    assert record.expires_at is None


def test_purge_dead_removes(backend: Backend, clock: FakeClock) -> None:
    backend.publish([message(clock)], BOUNDS)
    delivery = reserve_one(backend)
    backend.settle([Settlement(delivery, Action.DEAD, reason="poison")])

    count = backend.purge_dead("q")

    assert count == 1
    assert backend.dead_letters("q") == []
    assert backend.stats("q")[0].dead == 0
    assert backend.retry_dead("q") == 0


def test_purge_dead_by_id(backend: Backend, clock: FakeClock) -> None:
    still_dead, purged = message(clock), message(clock)
    backend.publish([still_dead, purged], BOUNDS)
    for delivery in backend.reserve(["q"], 2, LEASE, "w1"):
        backend.settle([Settlement(delivery, Action.DEAD, reason="poison")])

    count = backend.purge_dead("q", [purged.id])

    assert count == 1
    assert [letter.message_id for letter in backend.dead_letters("q")] == [still_dead.id]


def test_purge_dead_spares_live(backend: Backend, clock: FakeClock) -> None:
    live = message(clock)
    backend.publish([live], BOUNDS)

    assert backend.purge_dead("q") == 0
    assert backend.purge_dead("q", [live.id]) == 0
    assert backend.length("q") == 1


def test_empty_note_clears_note(backend: Backend, clock: FakeClock) -> None:
    new = job(clock)
    backend.enqueue_jobs([new], BOUNDS)
    first = reserve_one(backend)
    deferred = JobUpdate(JobState.SCHEDULED, note="deferred by breaker b", count_attempt=False)
    backend.settle([Settlement(first, Action.DEFER, deferred, delay=1)])
    clock.advance(2)
    second = reserve_one(backend)
    retrying = JobUpdate(JobState.RETRYING)
    backend.settle([Settlement(second, Action.RETRY, retrying)])
    before_success = backend.get_job(new.message.id)
    third = reserve_one(backend)

    backend.settle([Settlement(third, Action.ACK, JobUpdate(JobState.SUCCEEDED, note=""))])
    cleared = backend.get_job(new.message.id)

    assert before_success is not None
    assert before_success.note == "deferred by breaker b"
    assert cleared is not None
    assert cleared.note is None


def test_success_clears_earlier_error(backend: Backend, clock: FakeClock) -> None:
    new = job(clock)
    backend.enqueue_jobs([new], BOUNDS)
    first = reserve_one(backend)
    error = ErrorInfo("ValueError", "attempt 1 fails", "Traceback ...")
    backend.settle([Settlement(first, Action.RETRY, JobUpdate(JobState.RETRYING, error=error))])
    retrying = backend.get_job(new.message.id)
    second = reserve_one(backend)

    backend.settle([Settlement(second, Action.ACK, JobUpdate(JobState.SUCCEEDED, b"1"))])
    succeeded = backend.get_job(new.message.id)

    assert retrying is not None
    assert retrying.error == error
    assert succeeded is not None
    assert succeeded.state is JobState.SUCCEEDED
    assert succeeded.error is None


def test_later_error_replaces_earlier(backend: Backend, clock: FakeClock) -> None:
    # A later error without a traceback (a timeout, say) must not show the earlier one's.
    new = job(clock)
    backend.enqueue_jobs([new], BOUNDS)
    first = reserve_one(backend)
    error = ErrorInfo("ValueError", "attempt 1 fails", "Traceback ...")
    backend.settle([Settlement(first, Action.RETRY, JobUpdate(JobState.RETRYING, error=error))])
    second = reserve_one(backend)
    timeout = ErrorInfo("sluicegate.errors.TaskTimeout", "timed out")

    backend.settle([Settlement(second, Action.ACK, JobUpdate(JobState.FAILED, error=timeout))])
    failed = backend.get_job(new.message.id)

    assert failed is not None
    assert failed.error is not None
    assert failed.error.type == "sluicegate.errors.TaskTimeout"
    assert failed.error.message == "timed out"
    assert failed.error.traceback is None
