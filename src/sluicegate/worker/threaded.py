"""A worker without asyncio, for apps whose tasks are all sync thread-pool tasks.

``sluicegate worker`` picks it when no task of the app is ``async`` or
``pool="process"``. It keeps the semantics of the asyncio
:class:`sluicegate.worker.worker.Worker` and shares its job handling
(:mod:`sluicegate.worker.core`), but never imports asyncio, which with the
ssl module that asyncio loads is about 10 MiB of every worker process.

One *driver* thread runs the loop and makes every backend call itself:
exchange, heartbeat, purge. Tasks run on up to ``concurrency`` task threads.
A task thread hands its outcome back by appending it to a queue of calls
for the driver and, if the driver may be asleep, writing one byte to a
pipe. The driver sleeps in ``select`` on that pipe and on the backend's
wake-up listener, so a new message or a finished job wakes it at once and an
idle worker makes no calls. Timers (thread-task timeouts, rate-limit waits,
heartbeats) live in a heap that bounds each sleep.

The first SIGTERM or SIGINT lets running jobs finish within the grace
period; the second gives them back. The signal handler only posts the
signal to the driver, which acts on it between two steps.
NOTE: while a backend call waits out an outage (up to the backend's
reconnect window, 60 s on Redis), the driver acts on no signal and records
no finished job.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import logging
import os
import queue
import select
import signal
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from sluicegate.errors import StoreUnavailable
from sluicegate.message import TaskCall
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
from sluicegate.worker.execution import RunOutcome, run_sync, timeout_outcome
from sluicegate.worker.guards import TaskGuard
from sluicegate.worker.lease import Heartbeat
from sluicegate.worker.shutdown import STOP_SIGNALS

logger = logging.getLogger(__name__)


def _close_pipe(read_end: int, write_end: int) -> None:
    os.close(read_end)
    os.close(write_end)


@dataclass(eq=False)
class _Timer:
    when: float
    function: Callable[..., Any]
    args: tuple[Any, ...]
    cancelled: bool = False


@dataclass(eq=False)
class _ThreadCall:
    """The handle of one attempt on a task thread."""

    timer: _Timer | None = None
    done: bool = False
    straggling: bool = False  # failed at its timeout; its thread still runs it


@dataclass
class _Timers:
    """Calls due at a monotonic time, earliest first; cancelled ones are skipped."""

    heap: list[tuple[float, int, _Timer]] = field(default_factory=list)
    order: itertools.count[int] = field(default_factory=itertools.count)

    def add(self, delay: float, function: Callable[..., Any], *args: Any) -> _Timer:
        timer = _Timer(time.monotonic() + delay, function, args)
        heapq.heappush(self.heap, (timer.when, next(self.order), timer))
        return timer

    def next_in(self, now: float) -> float | None:
        while self.heap and self.heap[0][2].cancelled:
            heapq.heappop(self.heap)
        return None if not self.heap else max(self.heap[0][0] - now, 0.0)

    def pop_due(self, now: float) -> list[_Timer]:
        due = []
        while self.heap and self.heap[0][0] <= now:
            timer = heapq.heappop(self.heap)[2]
            if not timer.cancelled:
                due.append(timer)
        return due


class ThreadWorker(WorkerCore):
    """Runs sync thread-pool tasks from ``queues``, at most ``concurrency`` at once.

    The parameters are those of :class:`sluicegate.worker.core.WorkerCore`.
    A task of another pool that reaches it fails without a retry, with an
    error that names the pool; :func:`sluicegate.worker.needs_event_loop`
    returns whether an app needs :class:`Worker` instead.
    """

    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(app, *args, **kwargs)
        self._timers = _Timers()
        self._posted: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]]
        self._posted = collections.deque()
        self._woken = False  # a poke from the driver thread, or a wake-up, not yet seen
        self._signalled = False  # a post since the last _run_ready wrote a byte, or is about to
        self._pipe_r, self._pipe_w = os.pipe()
        os.set_blocking(self._pipe_r, False)
        os.set_blocking(self._pipe_w, False)
        # A straggler's thread posts its end after run() returned. Closing the pipe then
        # would let that byte land in whatever file reuses the descriptor, so the pipe
        # closes only once the worker is collected, when no thread can post any more.
        weakref.finalize(self, _close_pipe, self._pipe_r, self._pipe_w)
        self._listener: Any = None
        self._calls: queue.SimpleQueue[tuple[Running, Task[Any, Any], TaskCall] | None]
        self._calls = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle_threads = 0
        self._threads_lock = threading.Lock()

    # -- life cycle

    def run(self) -> int:
        """Run until SIGTERM or SIGINT; return the exit code (0 after a clean stop)."""
        self.backend = self.app.open_worker_backend()
        self._listener = self.backend.listener()
        previous = self._install_signals()
        heartbeat = Heartbeat(self)
        self._timers.add(heartbeat.interval, self._beat, heartbeat)
        self._log_started()
        try:
            self._loop()
            self._drain()
        finally:
            self._restore_signals(previous)
            self._listener.close()
            self._close()
        logger.info("worker stopped worker=%s", self.name)
        return self._exit_code()

    def stop(self) -> None:
        """Ask the worker to stop as after one SIGTERM; callable from any thread."""
        self.shutdown.request()
        self._post(self._poke)

    def _close(self) -> None:
        for _ in self._threads:
            self._calls.put(None)  # A straggler's thread reads it once its call returns.
        self._guard_io.shutdown(wait=True)
        if not self._store_down:
            with contextlib.suppress(StoreUnavailable):
                self.budgets.flush()
        self.backend.close()

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            logger.info("worker off the main thread, signals left alone worker=%s", self.name)
            return {}
        previous: dict[int, Any] = {}
        for signum in STOP_SIGNALS:
            previous[signum] = signal.signal(signum, self._on_signal)
        return previous

    def _restore_signals(self, previous: dict[int, Any]) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Runs between two bytecodes of the driver: hand the signal to it, nothing more.
        self._post(self._on_stop_signal, signum)

    def _beat(self, heartbeat: Heartbeat) -> None:
        heartbeat.beat([e for e in self.running.values() if e.context is not None])
        self._timers.add(heartbeat.interval, self._beat, heartbeat)

    # -- the loop

    def _loop(self) -> None:
        last_purge = 0.0
        while not self.shutdown.requested:
            self._run_ready()
            free = self._free_slots()
            settlements, self._pending = self._pending, []
            if free <= 0 and not settlements:
                self._sleep(MAX_IDLE_WAIT)
                continue
            if settlements and self.running:
                self._pending = settlements
                self._coalesce()
                settlements, self._pending = self._pending, []
                free = self._free_slots()
            limit = max(free, 0)
            try:
                settled, deliveries = self._exchange(
                    settlements, self.queues, limit, self.lease, self.name
                )
            except StoreUnavailable as exc:
                # The backend retried for its own window already. Keep the outcomes
                # and try again: a settlement that did land is rejected by its fence.
                self._pending = settlements + self._pending
                self._sleep(self._outage_delay(exc))
                continue
            except Exception as exc:
                self._pending = settlements + self._pending
                self._sleep(self._failure_delay(exc))
                continue
            self._outages = 0
            self._after_settle(settlements, settled)
            for delivery in deliveries:
                self._start(delivery)
            if time.monotonic() - last_purge > PURGE_INTERVAL:
                last_purge = time.monotonic()
                self._purge_expired()
            # A reserve that filled fewer slots than it requested found every queue empty,
            # so reserving again before a wake-up would only delay the next settlement.
            if len(deliveries) < limit and not self._pending:
                self._idle()

    def _coalesce(self) -> None:
        """Wait up to ``COALESCE_WINDOW`` for more jobs to finish, to settle them together."""
        deadline = time.monotonic() + COALESCE_WINDOW
        target = max(1, self.concurrency // 2)
        while len(self._pending) < target and self.running and not self.shutdown.requested:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._sleep(remaining)

    def _idle(self) -> None:
        """Sleep until a wake-up, a finished job, or the next delayed message or lease expiry."""
        if not self._sleep(IDLE_GRACE):
            self._sleep(max(self._next_idle_wait() - IDLE_GRACE, 0.0))

    def _sleep(self, timeout: float) -> bool:
        """Run posted calls and due timers for up to ``timeout`` seconds, until a poke.

        Returns whether a poke (or a backend wake-up) ended the sleep.
        """
        deadline = time.monotonic() + timeout
        while True:
            self._run_ready()
            if self._woken:
                self._woken = False
                return True
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                return False
            next_timer = self._timers.next_in(now)
            if next_timer is not None:
                remaining = min(remaining, next_timer)
            self._select(remaining)

    def _select(self, timeout: float) -> None:
        readable, _, _ = select.select([self._pipe_r, self._listener.fileno()], [], [], timeout)
        if self._pipe_r in readable:
            # Drained only here. A read in _run_ready could take the byte of a post made after
            # the flag was cleared, and later posts would then see the flag set and write none.
            with contextlib.suppress(BlockingIOError):
                while os.read(self._pipe_r, 512):
                    pass
        if self._listener.fileno() in readable:
            self._listener.drain()
            self._woken = True

    def _run_ready(self) -> None:
        """Run the calls other threads posted and the timers that are due."""
        # Cleared before the calls run, so a post from now on writes a byte, which stays
        # in the pipe until the next select returns.
        self._signalled = False
        while self._posted:
            function, args = self._posted.popleft()
            function(*args)
        for timer in self._timers.pop_due(time.monotonic()):
            timer.function(*timer.args)

    def _poke(self) -> None:
        self._woken = True

    def _post(self, function: Callable[..., Any], *args: Any) -> None:
        self._posted.append((function, args))
        if not self._signalled:
            self._signalled = True
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._pipe_w, b"\0")

    def _submit_io(self, function: Callable[..., Any], *args: Any) -> None:
        function(*args)  # The driver makes every backend call, in order.

    # -- one job

    def _admit(
        self, entry: Running, task: Task[Any, Any], call: TaskCall, guard: TaskGuard
    ) -> None:
        admission: Future[Any] = self._guard_io.submit(guard.admit)
        entry.handle = admission
        admission.add_done_callback(
            lambda _: self._post(self._on_admitted, entry, task, call, guard, admission)
        )

    def _on_admitted(
        self,
        entry: Running,
        task: Task[Any, Any],
        call: TaskCall,
        guard: TaskGuard,
        admission: Future[Any],
    ) -> None:
        wait = self._admitted(entry, task, call, guard, admission)
        if wait is None:
            return
        if wait > 0:
            self._timers.add(wait, self._run_after_wait, entry, task, call)  # its rate-limit slot
        else:
            self._run_admitted(entry, task, call)

    def _run_after_wait(self, entry: Running, task: Task[Any, Any], call: TaskCall) -> None:
        self._note_cancel_request(entry)
        self._run_admitted(entry, task, call)

    def _launch(self, entry: Running, task: Task[Any, Any], call: TaskCall) -> None:
        if task.options.pool != "thread":
            error = ErrorInfo(
                "sluicegate.errors.ConfigurationError",
                f"task {task.name} uses pool={task.options.pool!r}, which this worker "
                "(ThreadWorker) cannot run; run it with Worker",
            )
            self._finish(entry, RunOutcome("error", error=error))
            return
        handle = _ThreadCall()
        timeout = task.options.timeout
        if timeout is not None:
            handle.timer = self._timers.add(timeout, self._expire, entry, task)
        entry.handle = handle
        self._calls.put((entry, task, call))
        self._grow_threads()

    def _grow_threads(self) -> None:
        with self._threads_lock:
            if self._idle_threads > 0:
                self._idle_threads -= 1
                return
            if len(self._threads) >= self.concurrency:
                return
            thread = threading.Thread(
                target=self._work, name=f"sluicegate-task_{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        """Run queued calls on this task thread until a None arrives."""
        while True:
            item = self._calls.get()
            if item is None:
                return
            entry, task, call = item
            assert entry.context is not None
            if self.running.get(entry.delivery.message_id) is not entry:
                # Given back at shutdown while it waited for this thread: it must not start.
                with self._threads_lock:
                    self._idle_threads += 1
                continue
            try:
                outcome = run_sync(task, call, entry.context, self.app.max_message_size)
            except BaseException as exc:  # run_sync classifies task errors, so this is a bug.
                logger.exception("thread pool failed job_id=%s", call.job_id)
                info = ErrorInfo(type(exc).__name__, str(exc))
                outcome = RunOutcome("error", error=info, retryable=True)
            with self._threads_lock:
                self._idle_threads += 1
            self._post(self._thread_done, entry, outcome)

    def _thread_done(self, entry: Running, outcome: RunOutcome) -> None:
        handle: _ThreadCall = entry.handle
        handle.done = True
        if handle.timer is not None:
            handle.timer.cancelled = True
        if handle.straggling:
            self._straggler_done()
            return  # Failed at its timeout already; the result is discarded.
        self._finish(entry, outcome)

    def _expire(self, entry: Running, task: Task[Any, Any]) -> None:
        """Fail a thread job at its timeout; its thread runs on, its result is discarded."""
        handle = entry.handle
        if (
            not isinstance(handle, _ThreadCall)
            or handle.done
            or self.running.get(entry.delivery.message_id) is not entry
        ):
            return
        handle.straggling = True
        self._stragglers += 1
        how = "the thread runs on and its result will be discarded"
        self._finish(entry, timeout_outcome(task, task.options.timeout or 0.0, how))

    # -- shutdown

    def _on_stop_signal(self, signum: int) -> None:
        self.shutdown.on_signal(signum)
        if self.shutdown.giving_back:
            self._cancel_running()
        self._poke()

    def _drain(self) -> None:
        """Let running jobs finish within the grace period, then give the rest back."""
        deadline = time.monotonic() + self.shutdown.grace
        self._log_stopping()
        while self.running and not self.shutdown.giving_back:
            if time.monotonic() >= deadline:
                self.shutdown.give_back()
                break
            self._flush()
            self._sleep(min(0.1, max(deadline - time.monotonic(), 0.0)))
        if self.running:
            self._cancel_running()
        self._flush()

    def _cancel_running(self) -> None:
        for entry in list(self.running.values()):
            self._give_back(entry)

    def _flush(self) -> None:
        if self._store_down:
            return  # One flush at shutdown waited out the outage already.
        settlements, self._pending = self._pending, []
        if settlements:
            try:
                self._settle_now(settlements)
            except StoreUnavailable as exc:
                self._settle_failed(settlements, exc)
