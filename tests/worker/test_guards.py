"""A task's breaker, rate limit, deadline and retry budget on a real worker."""

from __future__ import annotations

import time
from pathlib import Path

from sluicegate import JobRecord

from .support import MakeApp, StartWorker, on_both_drivers, wait_until

#: Sync thread-pool tasks, which both drivers run.
SYNC_SOURCE = """
from pathlib import Path

FAST = Backoff(base=0.05, cap=0.1)
DOWN = Path(EVENT_LOG).with_name("down")

app.breaker(
    "downstream",
    minimum_calls=4,
    window=30,
    reset_timeout=0.5,
    half_open_calls=1,
    failure_types=(ConnectionError,),
)


@app.task(breaker="downstream", retries=3, backoff=FAST)
def call_downstream(n: int) -> int:
    mark("call")
    if DOWN.exists():
        raise ConnectionError("downstream refused the connection")
    return n


@app.task(breaker="downstream", retries=0)
def bad_input() -> None:
    mark("call")
    raise ValueError("not the downstream's fault")


app.breaker(
    "slow",
    minimum_calls=3,
    window=30,
    reset_timeout=60,
    failure_types=(sluicegate.errors.TaskTimeout,),
)


@app.task(breaker="slow", timeout=0.2, retries=0)
def too_slow() -> None:
    mark("call")
    time.sleep(1.0)


@app.task(breaker="downstream", deadline=1.0)
def urgent() -> None:
    mark("call")


@app.task(deadline=0.5)
def short_lived() -> None:
    mark("call")


@app.task(rate_limit="10/s")
def limited(n: int) -> int:
    mark("call")
    return n


app.retry_budget("flaky", ratio=0.1, window=60, min_retries=10)


@app.task(queue="flaky", retries=5, backoff=FAST)
def always_fails() -> None:
    mark("call", job_context().attempt)
    raise RuntimeError("still failing")
"""


def set_down(module_dir: Path, down: bool) -> None:
    path = module_dir / "down"
    if down:
        path.write_text("")
    else:
        path.unlink(missing_ok=True)


@on_both_drivers
def test_open_breaker_defers_without_spending_attempts(
    make_app: MakeApp, start_worker: StartWorker
) -> None:
    module = make_app(SYNC_SOURCE)
    set_down(module.directory, True)
    start_worker(module, "--concurrency", "4")
    task = module.task("call_downstream")
    jobs = [task.enqueue(n) for n in range(20)]

    def deferred() -> bool:
        records = module.records([job.id for job in jobs]).values()
        return any(
            r.state.value == "scheduled" and "deferred by breaker downstream" in (r.note or "")
            for r in records
        )

    wait_until(deferred, timeout=30, what="a job deferred by the open breaker")
    calls_while_down = len(module.events("call"))
    set_down(module.directory, False)
    records = module.wait_final([job.id for job in jobs], timeout=60)

    assert {r.state.value for r in records.values()} == {"succeeded"}
    assert max(r.attempts for r in records.values()) <= 4
    assert module.app.queue("default").dead_letters() == []
    # Four failures open it; each half-open round then admits one probe.
    assert calls_while_down < 20


@on_both_drivers
def test_other_errors_do_not_open_the_breaker(make_app: MakeApp, start_worker: StartWorker) -> None:
    module = make_app(SYNC_SOURCE)
    start_worker(module, "--concurrency", "4")
    jobs = [module.task("bad_input").enqueue() for _ in range(6)]
    records = module.wait_final([job.id for job in jobs], timeout=60)

    assert {r.state.value for r in records.values()} == {"failed"}
    assert module.app.breaker("downstream").state().state.value == "closed"


@on_both_drivers
def test_deferral_past_deadline_fails(make_app: MakeApp, start_worker: StartWorker) -> None:
    module = make_app(SYNC_SOURCE)
    module.app.breaker("downstream").force_open(60)
    start_worker(module)
    job = module.task("urgent").enqueue()
    record = module.wait_final([job.id], timeout=30)[job.id]

    assert record.state.value == "failed"
    assert record.error is not None
    assert record.error.type == "sluicegate.errors.DeadlineExceeded"
    assert "deferred by breaker downstream" in record.error.message
    assert "past its deadline" in record.error.message
    assert record.attempts == 0
    assert module.events("call") == []


@on_both_drivers
def test_job_started_after_deadline_fails(make_app: MakeApp, start_worker: StartWorker) -> None:
    module = make_app(SYNC_SOURCE)
    start_worker(module)
    job = module.task("short_lived").enqueue(delay=1.0)
    record = module.wait_final([job.id], timeout=30)[job.id]

    assert record.state.value == "failed"
    assert record.error is not None
    assert "not started before its deadline" in record.error.message
    assert module.events("call") == []


@on_both_drivers
def test_rate_limit_spaces_attempts(make_app: MakeApp, start_worker: StartWorker) -> None:
    module = make_app(SYNC_SOURCE)
    start_worker(module, "--concurrency", "8")
    jobs = module.task("limited").enqueue_many(((n,), {}) for n in range(30))
    records = module.wait_final([job.id for job in jobs], timeout=60)

    assert {r.state.value for r in records.values()} == {"succeeded"}
    assert max(r.attempts for r in records.values()) == 1
    times = sorted(event.time for event in module.events("call"))
    # 10 per second with a burst of 10: 30 calls need at least 2 seconds.
    assert times[-1] - times[0] >= 1.8
    for start in times:
        assert sum(1 for t in times if start <= t < start + 1.0) <= 20


@on_both_drivers
def test_retry_budget_stretches_retries(make_app: MakeApp, start_worker: StartWorker) -> None:
    module = make_app(SYNC_SOURCE)
    worker = start_worker(module, "--concurrency", "8")
    jobs = module.task("always_fails").enqueue_many(((), {}) for _ in range(40))

    wait_until(
        lambda: "retry budget spent" in worker.log(), timeout=30, what="the retry budget to run out"
    )
    first_seen = time.monotonic()
    wait_until(lambda: time.monotonic() - first_seen > 1.0, timeout=5, what="one second to pass")
    retries = [e for e in module.events("call") if e.fields != ("1",)]

    # 40 first attempts and a budget of 10% allow the floor of 10 retries at their backoff.
    assert len(retries) <= 12
    notes = [r.note or "" for r in module.records([job.id for job in jobs]).values()]
    assert any("by the retry budget of queue flaky" in note for note in notes)


@on_both_drivers
def test_timeouts_open_the_breaker(make_app: MakeApp, start_worker: StartWorker) -> None:
    # Three slots: the first three calls time out, which opens the breaker before
    # their threads return and free the slots, so every later job is deferred.
    module = make_app(SYNC_SOURCE)
    start_worker(module, "--concurrency", "3")
    ids = [module.task("too_slow").enqueue().id for _ in range(9)]

    def deferred(record: JobRecord) -> bool:
        note = record.note or ""
        return record.state.value == "scheduled" and "deferred by breaker slow" in note

    def all_settled() -> list[JobRecord] | None:
        records = list(module.records(ids).values())
        done = [r for r in records if r.state.value == "failed" or deferred(r)]
        return records if len(done) == len(ids) else None

    records = wait_until(all_settled, 30, "every job to fail or be deferred")
    failed = [r for r in records if r.state.value == "failed"]
    assert len(failed) == 3
    for record in failed:
        assert record.error is not None
        assert record.error.type == "sluicegate.errors.TaskTimeout"
    assert len([r for r in records if deferred(r)]) == 6
    assert {r.attempts for r in records if deferred(r)} == {0}
    assert len(module.events("call")) == 3
    assert module.app.breaker("slow").state().state.value == "open"
