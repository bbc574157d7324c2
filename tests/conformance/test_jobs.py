"""Job records: states through a job's life, cancellation, retention and queue stats."""

from __future__ import annotations

import pytest
from conformance_backends import FakeClock, job, message

from sluicegate.backends.base import Backend
from sluicegate.broker import Action, QueueBounds, Settlement
from sluicegate.message import Delivery
from sluicegate.store import ErrorInfo, JobRecord, JobState, JobUpdate

BOUNDS = QueueBounds()
LEASE = 30.0
RETENTION = 100.0


def reserve_one(backend: Backend) -> Delivery:
    deliveries = backend.reserve(["q"], 1, LEASE, "w1")
    assert len(deliveries) == 1
    return deliveries[0]


def record_of(backend: Backend, job_id: str) -> JobRecord:
    record = backend.get_job(job_id)
    assert record is not None
    return record


def succeed(backend: Backend, delivery: Delivery, result: bytes = b"42") -> None:
    update = JobUpdate(JobState.SUCCEEDED, result=result, retention=RETENTION)
    assert backend.settle([Settlement(delivery, Action.ACK, update)]) == [True]


def test_get_job_unknown(backend: Backend) -> None:
    assert backend.get_job("00000000-0000-7000-8000-000000000000") is None


def test_get_jobs_skips_unknown(backend: Backend, clock: FakeClock) -> None:
    new = job(clock)
    backend.enqueue_jobs([new], BOUNDS)

    records = backend.get_jobs([new.message.id, "unknown"])

    assert [r.id for r in records] == [new.message.id]


def test_new_job_record(backend: Backend, clock: FakeClock) -> None:
    new = job(clock, queue="mail", task="app.send")

    backend.enqueue_jobs([new], BOUNDS)
    record = record_of(backend, new.message.id)

    assert record.state is JobState.QUEUED
    assert record.task == "app.send"
    assert record.queue == "mail"
    assert record.attempts == 0
    assert record.created_at == clock()
    assert record.eta == clock()
    assert record.started_at is None
    assert record.cancel_requested is False


def test_state_scheduled_then_queued(backend: Backend, clock: FakeClock) -> None:
    new = job(clock, delay=10)
    backend.enqueue_jobs([new], BOUNDS)

    scheduled = record_of(backend, new.message.id)
    clock.advance(11)
    queued = record_of(backend, new.message.id)

    assert scheduled.state is JobState.SCHEDULED
    assert scheduled.eta == new.message.ready_at
    assert queued.state is JobState.QUEUED


def test_state_running(backend: Backend, clock: FakeClock) -> None:
    new = job(clock)
    backend.enqueue_jobs([new], BOUNDS)
    clock.advance(2)

    reserve_one(backend)
    record = record_of(backend, new.message.id)

    assert record.state is JobState.RUNNING
    assert record.attempts == 1
    assert record.started_at == clock()


def test_state_retrying(backend: Backend, clock: FakeClock) -> None:
    new = job(clock)
    backend.enqueue_jobs([new], BOUNDS)
    delivery = reserve_one(backend)
    error = ErrorInfo("ValueError", "bad input", "Traceback ...")
    update = JobUpdate(JobState.RETRYING, error=error)

    backend.settle([Settlement(delivery, Action.RETRY, update, delay=5)])
    record = record_of(backend, new.message.id)

    assert record.state is JobState.RETRYING
    assert record.error == error
    assert record.eta == clock() + 5
    assert record.finished_at is None
    assert record.expires_at is None


def test_state_retry_then_succeeded(backend: Backend, clock: FakeClock) -> None:
    new = job(clock)
    backend.enqueue_jobs([new], BOUNDS)
    delivery = reserve_one(backend)
    retrying = JobUpdate(JobState.RETRYING, error=ErrorInfo("ValueError", "bad input"))
    backend.settle([Settlement(delivery, Action.RETRY, retrying, delay=5)])
    clock.advance(6)

    second = reserve_one(backend)
    running = record_of(backend, new.message.id)
    succeed(backend, second, b'"done"')
    record = record_of(backend, new.message.id)

    assert running.state is JobState.RUNNING
    assert running.attempts == 2
    assert record.state is JobState.SUCCEEDED
    assert record.result == b'"done"'
    assert record.attempts == 2
    assert record.finished_at == clock()
    assert record.expires_at == clock() + RETENTION
    assert backend.length("q") == 0


def test_state_failed(backend: Backend, clock: FakeClock) -> None:
    new = job(clock)
    backend.enqueue_jobs([new], BOUNDS)
    delivery = reserve_one(backend)
    error = ErrorInfo("KeyError", "'user'", "Traceback ...")
    update = JobUpdate(JobState.FAILED, error=error, note="no retries", retention=RETENTION)

    backend.settle([Settlement(delivery, Action.ACK, update)])
    record = record_of(backend, new.message.id)

    assert record.state is JobState.FAILED
    assert record.error == error
    assert record.note == "no retries"
    assert record.finished_at == clock()
    assert record.expires_at == clock() + RETENTION


def test_state_failed_dead_letter(backend: Backend, clock: FakeClock) -> None:
    new = job(clock)
    backend.enqueue_jobs([new], BOUNDS)
    delivery = reserve_one(backend)
    update = JobUpdate(JobState.FAILED, error=ErrorInfo("OSError", "down"))

    backend.settle([Settlement(delivery, Action.DEAD, update, reason="retries exhausted")])
    record = record_of(backend, new.message.id)
    letters = backend.dead_letters("q")

    assert record.state is JobState.FAILED
    assert [letter.message_id for letter in letters] == [new.message.id]
    assert letters[0].reason == "retries exhausted"


def test_cancel_queued(backend: Backend, clock: FakeClock) -> None:
    new = job(clock)
    backend.enqueue_jobs([new], BOUNDS)

    record = backend.request_cancel(new.message.id, RETENTION)

    assert record is not None
    assert record.state is JobState.CANCELLED
    assert record.expires_at == clock() + RETENTION
    assert record_of(backend, new.message.id).state is JobState.CANCELLED
    assert backend.length("q") == 0
    assert backend.reserve(["q"], 1, LEASE, "w1") == []


def test_cancel_scheduled(backend: Backend, clock: FakeClock) -> None:
    new = job(clock, delay=10)
    backend.enqueue_jobs([new], BOUNDS)

    record = backend.request_cancel(new.message.id, RETENTION)
    clock.advance(11)

    assert record is not None
    assert record.state is JobState.CANCELLED
    assert backend.length("q") == 0
    assert backend.reserve(["q"], 1, LEASE, "w1") == []
    assert backend.next_due() is None


def test_cancel_retrying(backend: Backend, clock: FakeClock) -> None:
    new = job(clock)
    backend.enqueue_jobs([new], BOUNDS)
    delivery = reserve_one(backend)
    update = JobUpdate(JobState.RETRYING, error=ErrorInfo("ValueError", "x"))
    backend.settle([Settlement(delivery, Action.RETRY, update, delay=5)])

    record = backend.request_cancel(new.message.id, RETENTION)
    clock.advance(6)

    assert record is not None
    assert record.state is JobState.CANCELLED
    assert backend.reserve(["q"], 1, LEASE, "w1") == []


# Settlements that put a job's message back in its queue, each with the record the worker
# writes. They are a deferral by a breaker or rate limit, a retry and a give-back at shutdown.
WAITING_AFTER_SETTLEMENT = [
    pytest.param(Action.DEFER, JobState.SCHEDULED, "deferred by rate limit 1/5s", 5, id="defer"),
    pytest.param(Action.DEFER, JobState.SCHEDULED, "deferred by breaker b", 0, id="defer-now"),
    pytest.param(Action.RETRY, JobState.RETRYING, None, 0, id="retry-now"),
    pytest.param(Action.RELEASE, JobState.QUEUED, "given back at worker shutdown", 0, id="release"),
]


@pytest.mark.parametrize(("action", "state", "note", "delay"), WAITING_AFTER_SETTLEMENT)
def test_cancel_waiting_after_settlement(
    backend: Backend,
    clock: FakeClock,
    action: Action,
    state: JobState,
    note: str | None,
    delay: float,
) -> None:
    new = job(clock)
    backend.enqueue_jobs([new], BOUNDS)
    delivery = reserve_one(backend)
    update = JobUpdate(state, note=note, count_attempt=action is Action.RETRY)
    assert backend.settle([Settlement(delivery, action, update, delay=delay)]) == [True]
    waiting = record_of(backend, new.message.id)

    record = backend.request_cancel(new.message.id, RETENTION)
    clock.advance(delay + 1)

    assert waiting.state is state
    assert record is not None
    assert record.state is JobState.CANCELLED
    assert record.note == "cancelled before it ran"
    assert record.expires_at == clock() - delay - 1 + RETENTION
    assert record_of(backend, new.message.id).state is JobState.CANCELLED
    assert backend.length("q") == 0
    assert backend.reserve(["q"], 1, LEASE, "w1") == []
    assert backend.next_due() is None


def test_cancel_running(backend: Backend, clock: FakeClock) -> None:
    new = job(clock)
    backend.enqueue_jobs([new], BOUNDS)
    delivery = reserve_one(backend)

    record = backend.request_cancel(new.message.id, RETENTION)

    assert record is not None
    assert record.state is JobState.RUNNING
    assert record.cancel_requested is True
    assert backend.cancel_requests([new.message.id, "unknown"]) == {new.message.id}
    assert backend.extend([delivery], LEASE) == [True]


def test_cancel_running_redelivery(backend: Backend, clock: FakeClock) -> None:
    new = job(clock)
    backend.enqueue_jobs([new], BOUNDS)
    first = reserve_one(backend)
    backend.request_cancel(new.message.id, RETENTION)
    clock.advance(LEASE + 1)

    second = reserve_one(backend)

    assert first.cancel_requested is False
    assert second.cancel_requested is True


def test_cancel_final_unchanged(backend: Backend, clock: FakeClock) -> None:
    new = job(clock)
    backend.enqueue_jobs([new], BOUNDS)
    succeed(backend, reserve_one(backend))

    record = backend.request_cancel(new.message.id, RETENTION)

    assert record is not None
    assert record.state is JobState.SUCCEEDED
    assert record.result == b"42"


def test_cancel_unknown(backend: Backend) -> None:
    assert backend.request_cancel("unknown", RETENTION) is None


def test_cancel_requests_empty(backend: Backend, clock: FakeClock) -> None:
    new = job(clock)
    backend.enqueue_jobs([new], BOUNDS)

    assert backend.cancel_requests([new.message.id]) == set()
    assert backend.cancel_requests([]) == set()


def test_progress_needs_lease(backend: Backend, clock: FakeClock) -> None:
    new = job(clock)
    backend.enqueue_jobs([new], BOUNDS)
    stale = reserve_one(backend)
    clock.advance(LEASE + 1)
    current = reserve_one(backend)

    stale_held = backend.set_progress(new.message.id, stale.fence, 0.9, "stale")
    current_held = backend.set_progress(new.message.id, current.fence, 0.5, "half")
    record = record_of(backend, new.message.id)

    assert stale_held is False
    assert current_held is True
    assert record.progress == 0.5
    assert record.progress_message == "half"


def test_retention_purges_final(backend: Backend, clock: FakeClock) -> None:
    done, pending, cancelled = job(clock), job(clock), job(clock, delay=1000)
    backend.enqueue_jobs([done, pending, cancelled], BOUNDS)
    succeed(backend, reserve_one(backend))
    backend.request_cancel(cancelled.message.id, RETENTION)
    finished_at = clock()

    purged_early = backend.purge_expired(finished_at + RETENTION - 1)
    purged = backend.purge_expired(finished_at + RETENTION + 1)

    assert purged_early == 0
    assert purged == 2
    assert backend.get_job(done.message.id) is None
    assert backend.get_job(cancelled.message.id) is None
    assert backend.get_job(pending.message.id) is not None


def test_retention_ended_not_found(backend: Backend, clock: FakeClock) -> None:
    new = job(clock)
    backend.enqueue_jobs([new], BOUNDS)
    succeed(backend, reserve_one(backend))

    clock.advance(RETENTION + 1)

    assert backend.get_job(new.message.id) is None
    assert backend.get_jobs([new.message.id]) == []


def test_retention_frees_key(backend: Backend, clock: FakeClock) -> None:
    first = job(clock, idempotency_key="order-1")
    backend.enqueue_jobs([first], BOUNDS)
    succeed(backend, reserve_one(backend))
    clock.advance(RETENTION + 1)
    second = job(clock, idempotency_key="order-1")

    (result,) = backend.enqueue_jobs([second], BOUNDS)

    assert result.created is True
    assert result.job_id == second.message.id
    assert record_of(backend, second.message.id).state is JobState.QUEUED


def test_retention_key_kept(backend: Backend, clock: FakeClock) -> None:
    first = job(clock, idempotency_key="order-1")
    backend.enqueue_jobs([first], BOUNDS)
    succeed(backend, reserve_one(backend))
    clock.advance(RETENTION - 1)

    (result,) = backend.enqueue_jobs([job(clock, idempotency_key="order-1")], BOUNDS)

    assert result.created is False
    assert result.job_id == first.message.id


def test_retention_spares_running(backend: Backend, clock: FakeClock) -> None:
    new = job(clock)
    backend.enqueue_jobs([new], BOUNDS)
    reserve_one(backend)

    purged = backend.purge_expired(clock() + 365 * 24 * 3600)

    assert purged == 0
    assert record_of(backend, new.message.id).state is JobState.RUNNING


def test_stats_counts(backend: Backend, clock: FakeClock) -> None:
    backend.publish([message(clock) for _ in range(4)], BOUNDS)
    backend.publish([message(clock, delay=60)], BOUNDS)
    _running, poison = backend.reserve(["q"], 2, LEASE, "w1")
    backend.settle([Settlement(poison, Action.DEAD, reason="poison")])

    (stats,) = backend.stats("q")

    assert stats.name == "q"
    assert stats.ready == 2
    assert stats.delayed == 1
    assert stats.running == 1
    assert stats.dead == 1
    assert backend.length("q") == 4


def test_stats_oldest_ready_age(backend: Backend, clock: FakeClock) -> None:
    backend.publish([message(clock)], BOUNDS)
    clock.advance(3)
    backend.publish([message(clock)], BOUNDS)
    clock.advance(4)

    (stats,) = backend.stats("q")

    assert stats.oldest_ready_age == pytest.approx(7.0)


def test_stats_empty_age(backend: Backend, clock: FakeClock) -> None:
    backend.publish([message(clock, delay=60)], BOUNDS)

    (stats,) = backend.stats("q")

    assert stats.ready == 0
    assert stats.oldest_ready_age is None


def test_stats_due_delayed_ready(backend: Backend, clock: FakeClock) -> None:
    backend.publish([message(clock, delay=5)], BOUNDS)
    clock.advance(8)

    (stats,) = backend.stats("q")

    assert stats.ready == 1
    assert stats.delayed == 0
    assert stats.oldest_ready_age == pytest.approx(3.0)


def test_stats_bounds(backend: Backend, clock: FakeClock) -> None:
    backend.publish([message(clock)], QueueBounds(max_length=7, max_wait=30))

    (stats,) = backend.stats("q")

    assert stats.max_length == 7
    assert stats.max_wait == 30


# Each case enqueues under declared bounds, then under bounds that are not declared, with
# or without an idempotency key. Together they run each admission statement of every backend.
UNDECLARED_ENQUEUES = [
    pytest.param(QueueBounds(max_length=7, max_wait=30), None, id="max-wait"),
    pytest.param(QueueBounds(max_length=7, max_wait=30), "delivery-1", id="max-wait-keyed"),
    pytest.param(QueueBounds(max_length=7), None, id="max-length"),
    pytest.param(QueueBounds(max_length=7), "delivery-1", id="max-length-keyed"),
]


@pytest.mark.parametrize(("declared", "key"), UNDECLARED_ENQUEUES)
def test_stats_bounds_keep_declared(
    backend: Backend, clock: FakeClock, declared: QueueBounds, key: str | None
) -> None:
    backend.enqueue_jobs([job(clock)], declared)
    undeclared = QueueBounds(max_length=2**62, declared=False)

    (result,) = backend.enqueue_jobs([job(clock, idempotency_key=key)], undeclared)
    (stats,) = backend.stats("q")

    assert result.created is True
    assert stats.ready == 2
    assert stats.max_length == 7
    assert stats.max_wait == declared.max_wait


def test_stats_bounds_undeclared_publish(backend: Backend, clock: FakeClock) -> None:
    backend.publish([message(clock)], QueueBounds(max_length=7, max_wait=30))

    backend.publish([message(clock)], QueueBounds(max_length=2**62, declared=False))
    (stats,) = backend.stats("q")

    assert stats.ready == 2
    assert stats.max_length == 7
    assert stats.max_wait == 30


def test_stats_every_queue(backend: Backend, clock: FakeClock) -> None:
    backend.publish([message(clock, queue="a")], BOUNDS)
    backend.publish([message(clock, queue="b")], BOUNDS)

    names = {stats.name for stats in backend.stats()}

    assert names == {"a", "b"}


def test_stats_rates(backend: Backend, clock: FakeClock) -> None:
    backend.publish([message(clock) for _ in range(3)], BOUNDS)
    for delivery in backend.reserve(["q"], 2, LEASE, "w1"):
        backend.settle([Settlement(delivery, Action.ACK)])

    (stats,) = backend.stats("q")

    assert stats.completion_rate > 0
    assert stats.enqueue_rate == pytest.approx(1.5 * stats.completion_rate)


def test_stats_rates_decay(backend: Backend, clock: FakeClock) -> None:
    backend.publish([message(clock)], BOUNDS)
    (delivery,) = backend.reserve(["q"], 1, LEASE, "w1")
    backend.settle([Settlement(delivery, Action.ACK)])
    clock.advance(3600)

    (stats,) = backend.stats("q")

    assert stats.enqueue_rate == 0
    assert stats.completion_rate == 0
