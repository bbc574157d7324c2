"""The asyncio worker: reserve messages up to free capacity, run them, settle them.

One asyncio loop drives everything. Async tasks run on it; sync tasks run
in a thread pool, ``pool="process"`` tasks in a :class:`ProcessPool`. The
worker's own backend calls (reserve, settle, extend, cancel checks) run on
one dedicated I/O thread, so a slow commit never blocks the loop.
NOTE: ``job_context().progress()`` in an async task writes from the loop.
Settling and reserving share one transaction per loop turn
(:meth:`exchange`), so a busy worker pays about one commit per batch.
What it does with each job is in :mod:`sluicegate.worker.core`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from sluicegate.context import JobContext
from sluicegate.errors import StoreUnavailable, UnknownTask
from sluicegate.message import Delivery, TaskCall
from sluicegate.store import ErrorInfo
from sluicegate.task import Task
from sluicegate.worker.core import (
    COALESCE_WINDOW,
    IDLE_GRACE,
    MAX_IDLE_WAIT,
    PURGE_INTERVAL,
    Running,
    WorkerCore,
)
from sluicegate.worker.execution import RunOutcome, run_async, run_sync, timeout_outcome
from sluicegate.worker.guards import TaskGuard
from sluicegate.worker.lease import Heartbeat
from sluicegate.worker.pools import ChildDied, ProcessPool
from sluicegate.worker.threads import LoopThreadPool

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Worker(WorkerCore):
    """Runs jobs from ``queues`` with at most ``concurrency`` at once, on an asyncio loop.

    It serves every pool: thread, async and process. The parameters are
    those of :class:`sluicegate.worker.core.WorkerCore`.
    """

    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(app, *args, **kwargs)
        self._wake: asyncio.Event | None = None
        self._loop_ref: asyncio.AbstractEventLoop | None = None
        self._io = LoopThreadPool(1, "sluicegate-io")
        self._threads = LoopThreadPool(self.concurrency, "sluicegate-task")
        self._process_pool: ProcessPool | None = None

    # -- life cycle

    def run(self) -> int:
        """Run until SIGTERM or SIGINT; return the exit code (0 after a clean stop)."""
        return asyncio.run(self.serve())

    async def serve(self) -> int:
        """Run the worker on the current event loop until it is stopped."""
        loop = self._loop_ref = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.backend = await self._call(self.app.open_worker_backend)
        listener = await self._call(self.backend.listener)
        loop.add_reader(listener.fileno(), self._on_wake_signal, listener)
        self.shutdown.install(loop, self._on_stop_signal)
        heartbeat_task = asyncio.create_task(self._heartbeats(Heartbeat(self)))
        self._log_started()
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
        return self._exit_code()

    def stop(self) -> None:
        """Ask the worker to stop as after one SIGTERM (thread-safe through the loop)."""
        self.shutdown.request()
        self._poke()

    async def _close(self) -> None:
        if self._process_pool is not None:
            await self._call(self._process_pool.close)
        self._threads.shutdown(cancel_queued=True)
        self._guard_io.shutdown(wait=True)
        if not self._store_down:
            with contextlib.suppress(StoreUnavailable):
                await self._call(self.budgets.flush)
        await self._call(self.backend.close)
        self._io.shutdown(wait=True)

    async def _heartbeats(self, heartbeat: Heartbeat) -> None:
        while True:
            await asyncio.sleep(heartbeat.interval)
            entries = [e for e in self.running.values() if e.context is not None]
            if not entries:
                continue
            for entry in await self._call(heartbeat.beat, entries):
                if entry.task is not None and entry.task.options.pool == "async" and entry.handle:
                    entry.handle.cancel()

    # -- the loop

    async def _loop(self) -> None:
        last_purge = 0.0
        while not self.shutdown.requested:
            free = self._free_slots()
            settlements, self._pending = self._pending, []
            if free <= 0 and not settlements:
                await self._sleep(MAX_IDLE_WAIT)
                continue
            if settlements and self.running:
                self._pending = settlements
                await self._coalesce()
                settlements, self._pending = self._pending, []
                free = self._free_slots()
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
                await self._sleep(self._outage_delay(exc))
                continue
            except Exception as exc:
                self._pending = settlements + self._pending
                await self._sleep(self._failure_delay(exc))
                continue
            self._outages = 0
            self._after_settle(settlements, settled)
            for delivery in deliveries:
                self._start(delivery)
            if time.monotonic() - last_purge > PURGE_INTERVAL:
                last_purge = time.monotonic()
                await self._call(self._purge_expired)
            # A reserve that filled fewer slots than it requested found every queue empty,
            # so reserving again before a wake-up would only delay the next settlement.
            if len(deliveries) < limit and not self._pending:
                await self._idle()

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
            await self._sleep(max(await self._call(self._next_idle_wait) - IDLE_GRACE, 0.0))

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

    def _post(self, function: Callable[..., Any], *args: Any) -> None:
        assert self._loop_ref is not None
        self._loop_ref.call_soon_threadsafe(function, *args)

    def _submit_io(self, function: Callable[..., Any], *args: Any) -> None:
        # The I/O thread runs calls in order, so this one lands before the next exchange.
        self._io.submit(function, *args)

    def _on_wake_signal(self, listener: Any) -> None:
        listener.drain()
        self._poke()

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        return await self._io.submit(function, *args)

    # -- one job

    def _admit(
        self, entry: Running, task: Task[Any, Any], call: TaskCall, guard: TaskGuard
    ) -> None:
        entry.handle = asyncio.ensure_future(self._admit_on_loop(entry, task, call, guard))

    async def _admit_on_loop(
        self, entry: Running, task: Task[Any, Any], call: TaskCall, guard: TaskGuard
    ) -> None:
        """Pass the task's breaker and rate limit, then run the attempt or defer the job."""
        admission: Future[Any] = self._guard_io.submit(guard.admit)
        with contextlib.suppress(Exception):
            await asyncio.wrap_future(admission)
        wait = self._admitted(entry, task, call, guard, admission)
        if wait is None:
            return
        if wait > 0:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(wait)  # its reserved rate-limit slot
            await self._call(self._note_cancel_request, entry)
        self._run_admitted(entry, task, call)

    def _launch(self, entry: Running, task: Task[Any, Any], call: TaskCall) -> None:
        if task.options.pool == "thread":
            self._start_thread(entry, task, call)
        else:
            entry.handle = asyncio.ensure_future(self._execute(entry, task, call))

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

    # -- shutdown

    def _on_stop_signal(self) -> None:
        if self.shutdown.giving_back:
            self._cancel_running()
        self._poke()

    async def _drain(self) -> None:
        """Let running jobs finish within the grace period, then give the rest back."""
        deadline = time.monotonic() + self.shutdown.grace
        self._log_stopping()
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

    async def _flush(self) -> None:
        if self._store_down:
            return  # One flush at shutdown waited out the outage already.
        settlements, self._pending = self._pending, []
        if settlements:
            try:
                await self._call(self._settle_now, settlements)
            except StoreUnavailable as exc:
                self._settle_failed(settlements, exc)
