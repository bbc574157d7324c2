"""Job handling shared by every worker, whatever drives it: admit, run, settle.

Two workers share this core. :class:`sluicegate.worker.worker.Worker` runs
on an asyncio loop and serves every pool. :class:`sluicegate.worker.threaded.ThreadWorker`
serves apps whose tasks are all sync thread-pool tasks, with a plain thread
and no asyncio. Each calls the methods here from one thread, its
*driver thread*, and supplies the few steps that differ: starting a job,
waiting for a guard, and running a call on the driver thread later.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sluicegate.backends.base import Backend
from sluicegate.breaker_state import Ticket
from sluicegate.broker import Action, Settlement
from sluicegate.context import JobContext
from sluicegate.documents import iso
from sluicegate.errors import DecodeError, StoreUnavailable, UnknownTask
from sluicegate.message import Delivery, TaskCall, decode_task_call
from sluicegate.store import ErrorInfo, JobState, JobUpdate
from sluicegate.task import Task
from sluicegate.webhooks import enqueue_delivery
from sluicegate.worker.budgets import RetryBudgets
from sluicegate.worker.execution import RunOutcome
from sluicegate.worker.guards import Admitted, Deferral, TaskGuard, guard_for
from sluicegate.worker.lease import forward_cancels
from sluicegate.worker.metrics import WorkerMetrics
from sluicegate.worker.shutdown import Shutdown

logger = logging.getLogger(__name__)

#: Maximum idle sleep, in seconds, between two reserve attempts without a wake-up.
MAX_IDLE_WAIT = 2.0

#: Maximum wait, in seconds, for more finished jobs to settle in the same commit.
COALESCE_WINDOW = 0.002

#: Seconds an idle worker waits for a wake-up before it queries the backend for the
#: due time of the next delayed message or lease expiry.
IDLE_GRACE = 0.005

#: Maximum pause, in seconds, between two attempts to reach an unavailable backend.
OUTAGE_BACKOFF_CAP = 30.0

#: Seconds between two purges of expired job records.
PURGE_INTERVAL = 60.0

#: Deferral, in seconds, of a job whose breaker or rate limit could not be read.
GUARD_OUTAGE_DELAY = 1.0

#: Bounds, in seconds, of one deferral; a job deferred longer is checked again then.
MIN_DEFERRAL = 0.01
MAX_DEFERRAL = 24 * 3600.0


@dataclass(eq=False)
class Running:
    """One delivery the worker holds, from reserve to settle."""

    delivery: Delivery
    task: Task[Any, Any] | None
    max_attempts: int = 1
    context: JobContext | None = None
    handle: Any = None  # what runs the attempt: a future, a task or a thread call
    started: float = field(default_factory=time.monotonic)
    callback_url: str | None = None
    guard: TaskGuard | None = None
    ticket: Ticket | None = None  # the breaker's admission, settled with the outcome
    finishing: bool = False  # the breaker is counting the outcome; the slot is still taken


class WorkerCore:
    """Runs jobs from ``queues`` with at most ``concurrency`` at once.

    Parameters:
      app: the App whose tasks and backend to use.
      queues: queue names to consume; default every queue of the app's tasks.
      concurrency: jobs run at once, across all pools.
      processes: size of the process pool for ``pool="process"`` tasks.
      grace: seconds running jobs get to finish after the first SIGTERM.
      app_spec: ``module:attribute`` of the app, needed by the process pool.
      metrics: Prometheus counters to update, or None for no metrics.
    """

    def __init__(
        self,
        app: Any,
        queues: Sequence[str] | None = None,
        concurrency: int = 8,
        processes: int | None = None,
        grace: float = 30.0,
        app_spec: str | None = None,
        name: str | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.app = app
        self.queues = list(queues or served_queues(app))
        self.concurrency = max(1, int(concurrency))
        # Reserve under the shortest lease of the tasks served, so that a crash is recovered
        # after the job's own lease. The heartbeat then extends each job to its task's lease.
        self.lease = min(
            [
                app.lease,
                *(t.options.lease for t in app.tasks.values() if t.options.queue in self.queues),
            ]
        )
        self.processes = max(1, processes or os.cpu_count() or 1)
        self.app_spec = app_spec
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.shutdown = Shutdown(grace)
        self.metrics = metrics
        self.running: dict[str, Running] = {}
        self._pending: list[Settlement] = []
        self._stragglers = 0  # thread calls past their timeout that still occupy a thread
        self._outages = 0  # consecutive exchanges that failed, with StoreUnavailable or else
        self._store_down = False  # a flush at shutdown found the backend unavailable
        # Breaker and rate-limit calls block on the store; they get threads of their own.
        self._guard_io = ThreadPoolExecutor(4, thread_name_prefix="sluicegate-guard")
        self._guards: dict[str, TaskGuard | None] = {}
        self.budgets = RetryBudgets(app)
        self.backend: Backend  # opened when the worker starts, with worker durability

    # -- what each driver supplies

    def _poke(self) -> None:
        """Wake the driver thread if it sleeps; callable from the driver thread."""
        raise NotImplementedError

    def _post(self, function: Callable[..., Any], *args: Any) -> None:
        """Run ``function(*args)`` on the driver thread soon; callable from any thread."""
        raise NotImplementedError

    def _submit_io(self, function: Callable[..., Any], *args: Any) -> None:
        """Run a backend call before the next exchange, in order with the others."""
        raise NotImplementedError

    def _launch(self, entry: Running, task: Task[Any, Any], call: TaskCall) -> None:
        """Start the admitted attempt of ``entry``; its end calls :meth:`_finish`."""
        raise NotImplementedError

    def _admit(
        self, entry: Running, task: Task[Any, Any], call: TaskCall, guard: TaskGuard
    ) -> None:
        """Ask ``guard`` off the driver thread, then call :meth:`_admitted` with its verdict."""
        raise NotImplementedError

    # -- shared steps of the loop

    def _free_slots(self) -> int:
        return self.concurrency - len(self.running) - self._stragglers

    def _exchange(
        self,
        settlements: list[Settlement],
        queues: Sequence[str],
        limit: int,
        lease: float,
        worker: str,
    ) -> tuple[list[bool], list[Delivery]]:
        """Apply the retry budgets to ``settlements`` and exchange them with the backend."""
        settlements[:] = self.budgets.apply(settlements)
        return self.backend.exchange(settlements, queues, limit, lease, worker)

    def _outage_delay(self, error: StoreUnavailable) -> float:
        """Count one failed exchange, log it, and return the pause before the next one."""
        delay = self._count_failed_exchange()
        logger.error(
            "backend unavailable, worker keeps its jobs and retries worker=%s "
            "outages=%d retry_in_s=%.1f error=%s",
            self.name,
            self._outages,
            delay,
            error,
        )
        return delay

    def _failure_delay(self, error: Exception) -> float:
        """Count an exchange that raised an unexpected error, log it, and return the pause.

        The driver calls it in its ``except`` block, so the log carries the
        traceback. The worker keeps its settlements and tries again after the
        pause, like after an outage, instead of exiting and leaving its leased
        jobs to expire.
        """
        delay = self._count_failed_exchange()
        logger.exception(
            "exchange failed with an unexpected error, worker keeps its jobs and retries "
            "worker=%s failures=%d retry_in_s=%.1f error=%r",
            self.name,
            self._outages,
            delay,
            error,
        )
        return delay

    def _count_failed_exchange(self) -> float:
        """Count one failed exchange; return the pause before the next, doubling to a cap."""
        self._outages += 1
        delay: float = min(OUTAGE_BACKOFF_CAP, 0.5 * 2.0 ** min(self._outages, 8))
        return delay

    def _purge_expired(self) -> None:
        """Purge expired job records; a failure is logged and waits for the next purge."""
        try:
            self.backend.purge_expired(time.time())
        except StoreUnavailable:
            pass
        except Exception:
            logger.exception("expired job records not purged worker=%s", self.name)

    def _next_idle_wait(self) -> float:
        """Seconds until the next delayed message or lease expiry, at most ``MAX_IDLE_WAIT``."""
        try:
            due = self.backend.next_due()
        except StoreUnavailable:
            return MAX_IDLE_WAIT
        except Exception:
            logger.exception("next due time not read worker=%s", self.name)
            return MAX_IDLE_WAIT
        if due is None:
            return MAX_IDLE_WAIT
        return min(max(due - time.time(), 0.001), MAX_IDLE_WAIT)

    def _log_started(self) -> None:
        logger.info(
            "worker started worker=%s queues=%s concurrency=%d pid=%d driver=%s",
            self.name,
            ",".join(self.queues),
            self.concurrency,
            os.getpid(),
            type(self).__name__,
        )

    def _log_stopping(self) -> None:
        logger.info(
            "worker stopping, waiting for running jobs worker=%s running=%d grace_s=%g",
            self.name,
            len(self.running),
            self.shutdown.grace,
        )

    # -- one job

    def _start(self, delivery: Delivery) -> None:
        try:
            call = decode_task_call(delivery.body)
            task = self.app.get_task(call.task)
        except (DecodeError, UnknownTask) as exc:
            self._dead_letter_undeliverable(delivery, exc)
            return
        max_attempts = task.options.max_attempts if call.retries is None else call.retries + 1
        entry = Running(delivery, task, max_attempts, callback_url=call.callback_url)
        self.running[delivery.message_id] = entry
        if delivery.cancel_requested:
            logger.info("job cancelled before start job_id=%s task=%s", call.job_id, task.name)
            self._finish(entry, RunOutcome("cancelled"))
            return
        if delivery.delivery_count > max_attempts:
            self._exhausted_by_redelivery(entry)
            return
        deadline = self._deadline(entry)
        if deadline is not None and time.time() > deadline:
            self._miss_deadline(entry, "not started before its deadline")
            return
        entry.context = self._context(task, call, delivery)
        guard = self._guard(task)
        if guard is None:
            self._run(entry, task, call)
        else:
            self._admit(entry, task, call, guard)

    def _guard(self, task: Task[Any, Any]) -> TaskGuard | None:
        if task.name not in self._guards:
            self._guards[task.name] = guard_for(task)
        return self._guards[task.name]

    def _admitted(
        self,
        entry: Running,
        task: Task[Any, Any],
        call: TaskCall,
        guard: TaskGuard,
        admission: Future[Any],
    ) -> float | None:
        """Act on a guard's verdict: defer the job, or return the seconds to wait before running.

        Returns None when the job is deferred or no longer held, else the wait
        of its reserved rate-limit slot (often 0). ``admission`` is the finished
        call to ``guard.admit``.
        """
        try:
            verdict: Admitted | Deferral = admission.result()
        except Exception as exc:
            # An unreadable or invalid stored state must not hold the worker's slot.
            logger.log(
                logging.WARNING if isinstance(exc, StoreUnavailable) else logging.ERROR,
                "breaker or rate limit check failed, job deferred job_id=%s task=%s error=%r",
                call.job_id,
                task.name,
                exc,
                exc_info=not isinstance(exc, StoreUnavailable),
            )
            reason = f"deferred: its breaker or rate limit could not be checked ({exc})"
            verdict = Deferral(GUARD_OUTAGE_DELAY, reason[:500])
        if isinstance(verdict, Deferral):
            if self.running.get(entry.delivery.message_id) is entry:
                self._defer(entry, verdict)
            return None
        entry.guard, entry.ticket = guard, verdict.ticket
        return verdict.wait

    def _run_admitted(self, entry: Running, task: Task[Any, Any], call: TaskCall) -> None:
        """Run an attempt once its rate-limit wait is over, unless given back or cancelled."""
        if self.running.get(entry.delivery.message_id) is not entry:
            self._settle_guard(entry, None)  # Given back at shutdown meanwhile.
            return
        if entry.context is not None and entry.context._cancel_requested:
            logger.info("job cancelled before start job_id=%s task=%s", call.job_id, task.name)
            self._finish(entry, RunOutcome("cancelled"))
            return
        self._run(entry, task, call)

    def _note_cancel_request(self, entry: Running) -> None:
        """Read whether the job of ``entry`` got a cancel request (a blocking call).

        A job held for its rate-limit slot waits up to half a second, as long as
        the heartbeat's interval, so the worker reads its cancel request once more.
        """
        try:
            forward_cancels(self.backend, [entry])
        except Exception as exc:
            logger.warning(
                "cancel request not read, job starts job_id=%s error=%r",
                entry.delivery.message_id,
                exc,
            )

    def _run(self, entry: Running, task: Task[Any, Any], call: TaskCall) -> None:
        delivery = entry.delivery
        if delivery.delivery_count == 1:
            self.budgets.note_first_attempt(delivery.queue)
        logger.info(
            "job started job_id=%s task=%s queue=%s attempt=%d",
            call.job_id,
            task.name,
            delivery.queue,
            delivery.delivery_count,
        )
        if self.metrics is not None:
            self.metrics.job_started(delivery.queue, task.name, delivery.enqueued_at)
        self._launch(entry, task, call)

    def _deadline(self, entry: Running) -> float | None:
        assert entry.task is not None
        deadline = entry.task.options.deadline
        return None if deadline is None else entry.delivery.enqueued_at + deadline

    def _defer(self, entry: Running, deferral: Deferral) -> None:
        """Give the job back to its queue for ``deferral.delay`` seconds, spending no attempt."""
        assert entry.task is not None
        delay = deferral.delay
        if not MIN_DEFERRAL <= delay <= MAX_DEFERRAL:  # Also false for NaN.
            delay = MAX_DEFERRAL if delay > MAX_DEFERRAL else MIN_DEFERRAL

        until = time.time() + delay
        deadline = self._deadline(entry)
        if deadline is not None and until > deadline:
            self._miss_deadline(entry, f"{deferral.reason} until {iso(until)}, past its deadline")
            return

        del self.running[entry.delivery.message_id]
        logger.info(
            "job deferred job_id=%s task=%s reason=%s delay_s=%.3f",
            entry.delivery.message_id,
            entry.task.name,
            deferral.reason,
            delay,
        )

        note = f"{deferral.reason} until {iso(until)}"
        update = JobUpdate(
            JobState.SCHEDULED,
            note=note,
            retention=entry.task.options.retention,
            count_attempt=False,
        )
        settlement = Settlement(entry.delivery, Action.DEFER, update, delay=delay)
        if self.metrics is not None:
            self.metrics.job_settled(entry.task.name, settlement, 0.0)
        self._pending.append(settlement)
        self._poke()

    def _miss_deadline(self, entry: Running, cause: str) -> None:
        """Fail a job that cannot start before its deadline, without running it."""
        assert entry.task is not None
        deadline = entry.task.options.deadline
        reason = f"{cause}; deadline {iso(self._deadline(entry))} ({deadline:g}s after enqueue)"
        self.running.pop(entry.delivery.message_id, None)
        logger.warning(
            "job failed, it cannot start before its deadline job_id=%s task=%s reason=%s",
            entry.delivery.message_id,
            entry.task.name,
            reason,
        )
        error = ErrorInfo("sluicegate.errors.DeadlineExceeded", reason)
        update = JobUpdate(
            JobState.FAILED,
            error=error,
            note=reason,
            retention=entry.task.options.retention,
            count_attempt=False,
        )
        self._pending.append(Settlement(entry.delivery, Action.ACK, update))
        self._poke()

    def _settle_guard(self, entry: Running, failure: bool | None) -> Future[None]:
        """Hand the breaker its ticket back with the attempt's outcome, off the driver thread."""
        guard, ticket = entry.guard, entry.ticket
        entry.ticket = None
        if guard is None or ticket is None:
            done: Future[None] = Future()
            done.set_result(None)
            return done

        def settle() -> None:
            try:
                guard.settle(ticket, failure)
            except Exception:
                logger.exception(
                    "breaker outcome not recorded job_id=%s breaker=%s",
                    entry.delivery.message_id,
                    guard.breaker.name if guard.breaker is not None else None,
                )

        return self._guard_io.submit(settle)

    def _context(self, task: Task[Any, Any], call: TaskCall, delivery: Delivery) -> JobContext:
        backend = self.app.backend

        def report(fraction: float, message: str | None) -> None:
            backend.set_progress(call.job_id, delivery.fence, fraction, message)

        return JobContext(
            call.job_id, task.name, task.options.queue, delivery.delivery_count, report
        )

    def _straggler_done(self, _: Any = None) -> None:
        self._stragglers -= 1
        self._poke()

    # -- settling

    def _finish(self, entry: Running, outcome: RunOutcome) -> None:
        if self.running.get(entry.delivery.message_id) is not entry or entry.finishing:
            return  # Given back at shutdown, or failed at its timeout already.
        if entry.ticket is not None:
            # The breaker counts the outcome before the slot frees, so that no later
            # call is admitted on counts that miss this one.
            entry.finishing = True
            failure = outcome.breaker_failure if outcome.kind == "error" else None
            future = self._settle_guard(entry, False if outcome.kind == "ok" else failure)
            future.add_done_callback(lambda _: self._post(self._finish_counted, entry, outcome))
            return
        self._finish_counted(entry, outcome)

    def _finish_counted(self, entry: Running, outcome: RunOutcome) -> None:
        if self.running.get(entry.delivery.message_id) is not entry:
            return  # Given back at shutdown while the breaker counted it.
        del self.running[entry.delivery.message_id]
        assert entry.task is not None
        settlement = self._settlement(entry, entry.task, outcome)
        if self.metrics is not None:
            run_seconds = time.monotonic() - entry.started
            self.metrics.job_settled(entry.task.name, settlement, run_seconds)
        if entry.callback_url and settlement.job is not None and settlement.job.state.is_final:
            # Backend calls run in order, so this enqueue commits before the settlement.
            self._submit_io(self._enqueue_webhook, entry.delivery, entry.callback_url)
        self._pending.append(settlement)
        self._poke()

    def _enqueue_webhook(self, delivery: Delivery, url: str) -> None:
        try:
            enqueue_delivery(self.app, self.backend, delivery.message_id, delivery.queue, url)
        except Exception:
            logger.exception("webhook delivery not enqueued job_id=%s", delivery.message_id)

    def _settlement(self, entry: Running, task: Task[Any, Any], outcome: RunOutcome) -> Settlement:
        """Turn an attempt's outcome into an ack, a retry or a dead letter, with its record."""
        delivery, job_id = entry.delivery, entry.delivery.message_id
        retention = task.options.retention
        requested = entry.context is not None and entry.context._cancel_requested
        note = "cancel requested while running; the task finished anyway" if requested else None

        if outcome.kind == "cancelled" or (outcome.cancel_seen and outcome.kind == "ok"):
            logger.info("job cancelled job_id=%s task=%s", job_id, task.name)
            update = JobUpdate(JobState.CANCELLED, retention=retention, note="cancelled")
            return Settlement(delivery, Action.ACK, update)

        if outcome.kind == "ok":
            logger.info("job succeeded job_id=%s task=%s", job_id, task.name)
            # An empty note clears one left by an earlier deferral or retry delay.
            update = JobUpdate(
                JobState.SUCCEEDED, outcome.result, note=note or "", retention=retention
            )
            return Settlement(delivery, Action.ACK, update)

        error = outcome.error
        assert error is not None
        if not outcome.retryable:
            logger.info(
                "job failed job_id=%s task=%s error=%s: %s",
                job_id,
                task.name,
                error.type,
                error.message,
            )
            update = JobUpdate(JobState.FAILED, error=error, note=note, retention=retention)
            return Settlement(delivery, Action.ACK, update)

        attempt = delivery.delivery_count
        if attempt >= entry.max_attempts:
            tries = "1 attempt" if attempt == 1 else f"{attempt} attempts"
            reason = f"retries exhausted after {tries}: {error.type}: {error.message}"
            logger.warning(
                "job dead-lettered job_id=%s task=%s reason=%s", job_id, task.name, reason
            )
            update = JobUpdate(JobState.FAILED, error=error, note=reason, retention=retention)
            return Settlement(delivery, Action.DEAD, update, reason=reason)

        delay = outcome.retry_delay
        if delay is None:
            delay = task.options.backoff.delay(attempt)
        logger.warning(
            "job retried job_id=%s task=%s attempt=%d delay_s=%.3f error=%s: %s",
            job_id,
            task.name,
            attempt,
            delay,
            error.type,
            error.message,
        )
        update = JobUpdate(JobState.RETRYING, error=error, note=note, retention=retention)
        return Settlement(delivery, Action.RETRY, update, delay=max(delay, 0.0))

    def _after_settle(self, settlements: Sequence[Settlement], settled: Sequence[bool]) -> None:
        for settlement, ok in zip(settlements, settled, strict=True):
            if not ok:
                logger.warning(
                    "settlement rejected, lease lost message_id=%s fence=%d action=%s",
                    settlement.delivery.message_id,
                    settlement.delivery.fence,
                    settlement.action.value,
                )

    def _settle_now(self, settlements: list[Settlement]) -> None:
        """Settle ``settlements`` outside an exchange (a blocking backend call)."""
        settlements = self.budgets.apply(settlements)
        self._after_settle(settlements, self.backend.settle(settlements))

    def _settle_failed(self, settlements: list[Settlement], error: StoreUnavailable) -> None:
        """Keep outcomes the backend could not take, and log them.

        Each call already waited out the backend's reconnect window, so a
        stopping worker does not try again: it exits and reports them.
        """
        self._store_down = True
        self._pending = settlements + self._pending
        logger.error(
            "backend unavailable, outcomes not recorded yet worker=%s outcomes=%d error=%s",
            self.name,
            len(self._pending),
            error,
        )

    def _exit_code(self) -> int:
        """Return 0 after a clean stop, 1 if outcomes were left unrecorded."""
        if not self._pending:
            return 0
        logger.error(
            "worker stopped with outcomes not recorded, so their jobs run again once their "
            "leases expire worker=%s outcomes=%d job_ids=%s",
            self.name,
            len(self._pending),
            ",".join(s.delivery.message_id for s in self._pending[:20]),
        )
        return 1

    def _dead_letter_undeliverable(self, delivery: Delivery, exc: Exception) -> None:
        reason = f"undeliverable: {exc}"
        logger.error(
            "message dead-lettered message_id=%s queue=%s reason=%s",
            delivery.message_id,
            delivery.queue,
            reason,
        )
        error = ErrorInfo(type(exc).__name__, str(exc))
        update = JobUpdate(JobState.FAILED, error=error, note=reason, retention=self.app.retention)
        self._pending.append(Settlement(delivery, Action.DEAD, update, reason=reason))
        self._poke()

    def _exhausted_by_redelivery(self, entry: Running) -> None:
        assert entry.task is not None
        count = entry.delivery.delivery_count - 1
        reason = (
            f"delivered {'once' if count == 1 else f'{count} times'} without a recorded "
            "outcome (the worker died or lost "
            f"its lease each time); max attempts is {entry.max_attempts}"
        )
        error = ErrorInfo("sluicegate.errors.LeaseLost", reason)
        self.running.pop(entry.delivery.message_id, None)
        logger.warning("job dead-lettered job_id=%s reason=%s", entry.delivery.message_id, reason)
        update = JobUpdate(
            JobState.FAILED,
            error=error,
            note=reason,
            retention=entry.task.options.retention,
            count_attempt=False,
        )
        self._pending.append(Settlement(entry.delivery, Action.DEAD, update, reason=reason))
        self._poke()

    # -- shutdown

    def _give_back(self, entry: Running) -> None:
        if self.running.get(entry.delivery.message_id) is not entry:
            return
        del self.running[entry.delivery.message_id]
        self._settle_guard(entry, None)
        logger.warning(
            "job given back at shutdown job_id=%s attempt=%d",
            entry.delivery.message_id,
            entry.delivery.delivery_count,
        )
        update = JobUpdate(
            JobState.QUEUED, note="given back at worker shutdown", count_attempt=False
        )
        self._pending.append(Settlement(entry.delivery, Action.RELEASE, update))


def served_queues(app: Any) -> list[str]:
    """Return the queues of the app's tasks, sorted, or ``["default"]`` when it has none."""
    return sorted({t.options.queue for t in app.tasks.values()}) or ["default"]
