"""The worker: reserve messages up to free capacity, run them, settle them.

One asyncio loop drives everything. Async tasks run on it; sync tasks run
in a thread pool, ``pool="process"`` tasks in a :class:`ProcessPool`. The
worker's own backend calls (reserve, settle, extend, cancel checks) run on
one dedicated I/O thread, so a slow commit never blocks the loop.
NOTE: ``job_context().progress()`` in an async task writes from the loop.
Settling and reserving share one transaction per loop turn
(:meth:`exchange`), so a busy worker pays about one commit per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

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
from sluicegate.worker.execution import RunOutcome, run_async, run_sync, timeout_outcome
from sluicegate.worker.guards import Deferral, TaskGuard, guard_for
from sluicegate.worker.lease import Heartbeat
from sluicegate.worker.metrics import WorkerMetrics
from sluicegate.worker.pools import ChildDied, ProcessPool
from sluicegate.worker.shutdown import Shutdown
from sluicegate.worker.threads import LoopThreadPool

logger = logging.getLogger(__name__)

T = TypeVar("T")

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
    handle: asyncio.Future[Any] | None = None
    started: float = field(default_factory=time.monotonic)
    callback_url: str | None = None
    guard: TaskGuard | None = None
    ticket: Ticket | None = None  # the breaker's admission, settled with the outcome
    finishing: bool = False  # the breaker is counting the outcome; the slot is still taken


class Worker:
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
        self.queues = list(queues or sorted({t.options.queue for t in app.tasks.values()}))
        if not self.queues:
            self.queues = ["default"]
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
        self._outages = 0  # consecutive exchanges that failed with StoreUnavailable
        self._wake: asyncio.Event | None = None
        self._io = LoopThreadPool(1, "sluicegate-io")
        self._threads = LoopThreadPool(self.concurrency, "sluicegate-task")
        # Breaker and rate-limit calls block on the store; they get threads of their own.
        self._guard_io = ThreadPoolExecutor(4, thread_name_prefix="sluicegate-guard")
        self._guards: dict[str, TaskGuard | None] = {}
        self.budgets = RetryBudgets(app)
        self._process_pool: ProcessPool | None = None
        self.backend: Backend  # opened in serve(), with worker durability

    # -- life cycle

    def run(self) -> int:
        """Run until SIGTERM or SIGINT; return the exit code (0 after a clean stop)."""
        return asyncio.run(self.serve())

    async def serve(self) -> int:
        """Run the worker on the current event loop until it is stopped."""
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.backend = await self._call(self.app.open_worker_backend)
        listener = await self._call(self.backend.listener)
        loop.add_reader(listener.fileno(), self._on_wake_signal, listener)
        self.shutdown.install(loop, self._on_stop_signal)
        heartbeat = Heartbeat(self)
        heartbeat_task = asyncio.create_task(heartbeat.run())
        logger.info(
            "worker started worker=%s queues=%s concurrency=%d pid=%d",
            self.name,
            ",".join(self.queues),
            self.concurrency,
            os.getpid(),
        )
        try:
            await self._loop()
            await self._drain()
        finally:
            heartbeat_task.cancel()
            self.shutdown.uninstall(loop)
            loop.remove_reader(listener.fileno())
            listener.close()
            await self._close()
        logger.info("worker stopped worker=%s", self.name)
        return 0

    def stop(self) -> None:
        """Ask the worker to stop as after one SIGTERM (thread-safe through the loop)."""
        self.shutdown.request()
        self._poke()

    async def _close(self) -> None:
        if self._process_pool is not None:
            await self._call(self._process_pool.close)
        self._threads.shutdown(cancel_queued=True)
        self._guard_io.shutdown(wait=True)
        with contextlib.suppress(StoreUnavailable):
            await self._call(self.budgets.flush)
        await self._call(self.backend.close)
        self._io.shutdown(wait=True)

    # -- the loop

    async def _loop(self) -> None:
        last_purge = 0.0
        while not self.shutdown.requested:
            free = self.concurrency - len(self.running) - self._stragglers
            settlements, self._pending = self._pending, []
            if free <= 0 and not settlements:
                await self._sleep(MAX_IDLE_WAIT)
                continue
            if settlements and self.running:
                self._pending = settlements
                await self._coalesce()
                settlements, self._pending = self._pending, []
                free = self.concurrency - len(self.running) - self._stragglers
            limit = max(free, 0)
            try:
                settled, deliveries = await self._call(
                    self._exchange,
                    settlements,
                    self.queues,
                    limit,
                    self.lease,
                    self.name,
                )
            except StoreUnavailable as exc:
                # The backend retried for its own window already. Keep the outcomes
                # and try again: a settlement that did land is rejected by its fence.
                self._pending = settlements + self._pending
                await self._wait_out_outage(exc)
                continue
            self._outages = 0
            self._after_settle(settlements, settled)
            for delivery in deliveries:
                self._start(delivery)
            if time.monotonic() - last_purge > PURGE_INTERVAL:
                last_purge = time.monotonic()
                with contextlib.suppress(StoreUnavailable):
                    await self._call(self.backend.purge_expired)
            # A reserve that filled fewer slots than it requested found every queue empty,
            # so reserving again before a wake-up would only delay the next settlement.
            if len(deliveries) < limit and not self._pending:
                await self._idle()

    def _exchange(
        self,
        settlements: list[Settlement],
        queues: Sequence[str],
        limit: int,
        lease: float,
        worker: str,
    ) -> tuple[list[bool], list[Delivery]]:
        """Apply the retry budgets to ``settlements`` and exchange them (on the I/O thread)."""
        settlements[:] = self.budgets.apply(settlements)
        return self.backend.exchange(settlements, queues, limit, lease, worker)

    async def _wait_out_outage(self, error: StoreUnavailable) -> None:
        self._outages += 1
        delay = min(OUTAGE_BACKOFF_CAP, 0.5 * 2 ** min(self._outages, 8))
        logger.error(
            "backend unavailable, worker keeps its jobs and retries worker=%s "
            "outages=%d retry_in_s=%.1f error=%s",
            self.name,
            self._outages,
            delay,
            error,
        )
        await self._sleep(delay)

    async def _coalesce(self) -> None:
        """Wait up to ``COALESCE_WINDOW`` for more jobs to finish, to settle them together.

        Fast jobs finish a few at a time; settling each group at once would
        cost one commit per job or two. The wait ends early once half the
        slots have finished or nothing else runs, so an idle worker adds no delay.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + COALESCE_WINDOW
        target = max(1, self.concurrency // 2)
        while len(self._pending) < target and self.running and not self.shutdown.requested:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            await self._sleep(remaining)

    async def _idle(self) -> None:
        """Sleep until a wake-up, a finished job, or the next delayed message or lease expiry.

        Most idle spells of a busy worker end within milliseconds, so the
        worker queries the backend for the next due time only after
        ``IDLE_GRACE`` passes without a wake-up. That keeps the query off the
        I/O thread while a job that just finished, or a new message, waits for it.
        """
        if not await self._sleep(IDLE_GRACE):
            await self._sleep(max(await self._idle_wait() - IDLE_GRACE, 0.0))

    async def _idle_wait(self) -> float:
        try:
            due = await self._call(self.backend.next_due)
        except StoreUnavailable:
            return MAX_IDLE_WAIT
        if due is None:
            return MAX_IDLE_WAIT
        return min(max(due - time.time(), 0.001), MAX_IDLE_WAIT)

    async def _sleep(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a poke, and return whether one came."""
        assert self._wake is not None
        if not self._wake.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
        woken = self._wake.is_set()
        self._wake.clear()
        return woken

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _on_wake_signal(self, listener: Any) -> None:
        listener.drain()
        self._poke()

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        return await self._io.submit(function, *args)

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
            entry.handle = asyncio.ensure_future(self._admit(entry, task, call, guard))

    def _guard(self, task: Task[Any, Any]) -> TaskGuard | None:
        if task.name not in self._guards:
            self._guards[task.name] = guard_for(task)
        return self._guards[task.name]

    async def _admit(
        self, entry: Running, task: Task[Any, Any], call: TaskCall, guard: TaskGuard
    ) -> None:
        """Pass the task's breaker and rate limit, then run the attempt or defer the job."""
        loop = asyncio.get_running_loop()
        try:
            verdict = await loop.run_in_executor(self._guard_io, guard.admit)
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
            return
        entry.guard, entry.ticket = guard, verdict.ticket
        if verdict.wait > 0:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(verdict.wait)  # its reserved rate-limit slot
        if self.running.get(entry.delivery.message_id) is not entry:
            self._settle_guard(entry, None)  # Given back at shutdown meanwhile.
            return
        self._run(entry, task, call)

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
        if task.options.pool == "thread":
            self._start_thread(entry, task, call)
        else:
            entry.handle = asyncio.ensure_future(self._execute(entry, task, call))

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
        """Hand the breaker its ticket back with the attempt's outcome, off the loop."""
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

    def _start_thread(self, entry: Running, task: Task[Any, Any], call: TaskCall) -> None:
        """Run a sync task on the thread pool, with callbacks rather than a coroutine.

        Most jobs of a busy worker are short sync calls, and a future with a
        done callback costs a fraction of an asyncio task per job. The pool
        resolves the future on the loop, so ``done`` runs there.
        """
        assert entry.context is not None
        loop = asyncio.get_running_loop()
        future = self._threads.submit(
            run_sync, task, call, entry.context, self.app.max_message_size
        )
        entry.handle = future
        timeout = task.options.timeout
        timer = None if timeout is None else loop.call_later(timeout, self._expire, entry, task)

        def done(finished: asyncio.Future[RunOutcome]) -> None:
            if timer is not None:
                timer.cancel()
            if finished.cancelled():
                return  # The executor shut down; the job was given back.
            error = finished.exception()
            if error is None:
                self._finish(entry, finished.result())
                return
            logger.error("thread pool failed job_id=%s error=%r", call.job_id, error)
            info = ErrorInfo(type(error).__name__, str(error))
            self._finish(entry, RunOutcome("error", error=info, retryable=True))

        future.add_done_callback(done)

    def _expire(self, entry: Running, task: Task[Any, Any]) -> None:
        """Fail a thread job at its timeout; its thread runs on, its result is discarded."""
        future = entry.handle
        if (
            future is None
            or future.done()
            or self.running.get(entry.delivery.message_id) is not entry
        ):
            return
        self._stragglers += 1
        future.add_done_callback(self._straggler_done)
        how = "the thread runs on and its result will be discarded"
        self._finish(entry, timeout_outcome(task, task.options.timeout or 0.0, how))

    def _context(self, task: Task[Any, Any], call: TaskCall, delivery: Delivery) -> JobContext:
        backend = self.app.backend

        def report(fraction: float, message: str | None) -> None:
            backend.set_progress(call.job_id, delivery.fence, fraction, message)

        return JobContext(
            call.job_id, task.name, task.options.queue, delivery.delivery_count, report
        )

    async def _execute(self, entry: Running, task: Task[Any, Any], call: TaskCall) -> None:
        assert entry.context is not None
        timeout = task.options.timeout
        try:
            if task.options.pool == "async":
                outcome = await self._run_async(task, call, entry.context, timeout)
            elif task.options.pool == "process":
                outcome = await self._run_process(task, entry.delivery, entry.context, timeout)
            else:
                raise AssertionError(f"thread task {task.name} reached the coroutine path")
        except asyncio.CancelledError:
            if self.shutdown.giving_back:
                self._give_back(entry)
                return
            outcome = RunOutcome("cancelled", cancel_seen=True)
        except Exception as exc:  # A failure of the pool itself, not of the task.
            logger.exception("job execution failed job_id=%s task=%s", call.job_id, task.name)
            error = ErrorInfo(type(exc).__name__, str(exc))
            outcome = RunOutcome("error", error=error, retryable=True)
        self._finish(entry, outcome)

    async def _run_async(
        self, task: Task[Any, Any], call: TaskCall, context: JobContext, timeout: float | None
    ) -> RunOutcome:
        try:
            return await asyncio.wait_for(
                run_async(task, call, context, self.app.max_message_size), timeout
            )
        except TimeoutError:
            return timeout_outcome(task, timeout or 0.0, "the coroutine was cancelled")

    def _straggler_done(self, _: Any) -> None:
        self._stragglers -= 1
        self._poke()

    async def _run_process(
        self, task: Task[Any, Any], delivery: Delivery, context: JobContext, timeout: float | None
    ) -> RunOutcome:
        if self._process_pool is None:
            if self.app_spec is None:
                raise UnknownTask(f"{task.name} (pool='process' needs the worker's app spec)")
            self._process_pool = ProcessPool(self.processes, self.app_spec)
        try:
            return await self._process_pool.run(
                delivery.body,
                delivery.fence,
                delivery.delivery_count,
                timeout,
                cancelled=lambda: context.cancelled,
            )
        except TimeoutError:
            return timeout_outcome(task, timeout or 0.0, "its process was killed")
        except ChildDied as exc:
            return RunOutcome("error", error=ErrorInfo("ChildDied", str(exc)), retryable=True)

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
            loop = asyncio.get_running_loop()
            future.add_done_callback(
                lambda _: loop.call_soon_threadsafe(self._finish_counted, entry, outcome)
            )
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
            # The I/O thread runs calls in order, so this enqueue commits before the settlement.
            self._io.submit(self._enqueue_webhook, entry.delivery, entry.callback_url)
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
            reason = f"retries exhausted after {attempt} attempts: {error.type}: {error.message}"
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
            f"delivered {count} times without a recorded outcome (the worker died or lost "
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

    def _on_stop_signal(self) -> None:
        if self.shutdown.giving_back:
            self._cancel_running()
        self._poke()

    async def _drain(self) -> None:
        """Let running jobs finish within the grace period, then give the rest back."""
        deadline = time.monotonic() + self.shutdown.grace
        logger.info(
            "worker stopping, waiting for running jobs worker=%s running=%d grace_s=%g",
            self.name,
            len(self.running),
            self.shutdown.grace,
        )
        while self.running and not self.shutdown.giving_back:
            if time.monotonic() >= deadline:
                self.shutdown.give_back()
                break
            await self._flush()
            await self._sleep(min(0.1, max(deadline - time.monotonic(), 0.0)))
        if self.running:
            self._cancel_running()
            await asyncio.sleep(0)
        await self._flush()

    def _cancel_running(self) -> None:
        if self._process_pool is not None:
            self._process_pool.kill_busy()
        for entry in list(self.running.values()):
            if (
                entry.handle is not None
                and entry.task is not None
                and entry.task.options.pool != "thread"
            ):
                entry.handle.cancel()
            self._give_back(entry)

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

    async def _flush(self) -> None:
        settlements, self._pending = self._pending, []
        if settlements:
            settlements = await self._call(self.budgets.apply, settlements)
            settled = await self._call(self.backend.settle, settlements)
            self._after_settle(settlements, settled)
