"""A process pool that can kill one stuck task without breaking the others.

``concurrent.futures.ProcessPoolExecutor`` cannot stop a single running call:
killing one of its processes marks the whole pool broken and fails every
call in it. This pool gives each child process one call at a time over its
own pipe, so a call past its timeout is stopped by killing only its child,
which is then replaced.

Children are started with the ``spawn`` method (a fork of a process that
runs threads can deadlock) and import the app from ``app_spec``
(``module:attribute``) to find the task functions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sluicegate.app import load_app
from sluicegate.context import JobContext
from sluicegate.errors import ConfigurationError
from sluicegate.message import decode_task_call
from sluicegate.store import ErrorInfo
from sluicegate.worker.execution import RunOutcome, run_sync

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

logger = logging.getLogger(__name__)

#: Seconds a child may take to exit after a stop request before it is killed.
STOP_GRACE = 5.0

#: Seconds between two checks of a child that its worker is still alive.
ORPHAN_CHECK_INTERVAL = 0.2


class ChildDied(Exception):
    """The child process running a call exited before returning a result."""


class _Child:
    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn


class ProcessPool:
    """``size`` child processes, each running one task call at a time."""

    def __init__(self, size: int, app_spec: str, sys_path: list[str] | None = None) -> None:
        if size < 1:
            raise ConfigurationError(f"process pool size must be at least 1, got {size}")
        self.size = size
        self.app_spec = app_spec
        self.sys_path = list(sys_path if sys_path is not None else sys.path)
        import multiprocessing  # Imported here: workers without process tasks never need it.

        self._context = multiprocessing.get_context("spawn")
        self._idle: asyncio.Queue[_Child] | None = None
        self._started = 0
        self._busy: set[_Child] = set()

    async def run(
        self,
        body: bytes,
        fence: int,
        attempt: int,
        timeout: float | None,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> RunOutcome:
        """Run the task call in ``body`` in a child; kill the child after ``timeout`` s.

        ``cancelled`` is checked once a child is free, just before the call
        starts: if it returns true the call does not run.
        """
        child = await self._acquire()
        if cancelled():
            self._release(child)
            return RunOutcome("cancelled")
        self._busy.add(child)
        loop = asyncio.get_running_loop()
        try:
            child.conn.send((body, fence, attempt))
            receive = loop.run_in_executor(None, child.conn.recv)
            outcome: RunOutcome = await asyncio.wait_for(receive, timeout)
        except TimeoutError:
            logger.warning("process task timed out, killing child pid=%s", child.process.pid)
            self._kill(child)
            raise
        except asyncio.CancelledError:
            self._kill(child)
            raise
        except (EOFError, OSError, BrokenPipeError) as exc:
            code = child.process.exitcode
            self._kill(child)
            raise ChildDied(f"process pool child exited with code {code}") from exc
        finally:
            self._busy.discard(child)
        self._release(child)
        return outcome

    async def _acquire(self) -> _Child:
        if self._idle is None:
            self._idle = asyncio.Queue()
        if self._idle.empty() and self._started < self.size:
            self._started += 1
            return await asyncio.get_running_loop().run_in_executor(None, self._spawn)
        return await self._idle.get()

    def _release(self, child: _Child) -> None:
        assert self._idle is not None
        self._idle.put_nowait(child)

    def _spawn(self) -> _Child:
        parent_conn, child_conn = self._context.Pipe()
        process = self._context.Process(
            target=_child_main,
            args=(self.app_spec, self.sys_path, child_conn, os.getpid()),
            name="sluicegate-process",
            daemon=True,
        )
        process.start()
        child_conn.close()
        logger.info("process pool child started pid=%s", process.pid)
        return _Child(process, parent_conn)

    def _kill(self, child: _Child) -> None:
        with contextlib.suppress(OSError):
            child.process.kill()
        child.process.join(STOP_GRACE)
        child.conn.close()
        self._started -= 1
        logger.info("process pool child stopped pid=%s", child.process.pid)

    def kill_busy(self) -> None:
        """Kill every child that is running a call now (shutdown give-back)."""
        for child in list(self._busy):
            with contextlib.suppress(OSError):
                child.process.kill()

    def close(self) -> None:
        """Stop every child: ask idle ones to exit, kill the rest."""
        children: list[_Child] = list(self._busy)
        if self._idle is not None:
            while not self._idle.empty():
                children.append(self._idle.get_nowait())
        for child in children:
            with contextlib.suppress(OSError):
                child.conn.send(None)
        for child in children:
            child.process.join(STOP_GRACE)
            if child.process.is_alive():
                child.process.kill()
                child.process.join(STOP_GRACE)
            child.conn.close()
        self._started = 0


def _child_main(app_spec: str, sys_path: list[str], conn: Connection, parent: int) -> None:
    # The parent decides when a child stops: it kills a child at a timeout or a give-back.
    # A SIGTERM or SIGINT sent to the whole process group must not end the running call.
    # NOTE: a signal that arrives while the child is still starting, before these lines, ends it.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watcher = threading.Thread(target=_exit_with, args=(parent,), name="sluicegate-orphan")
    watcher.daemon = True
    watcher.start()
    sys.path[:] = sys_path
    logging.basicConfig(level=logging.WARNING)
    app = load_app(app_spec)
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return  # The worker closed the pipe or died: nothing is left to run.
        if request is None:
            return
        body, fence, attempt = request
        try:
            conn.send(_run_request(app, body, fence, attempt))
        except OSError:
            return


def _exit_with(parent: int) -> None:
    """Exit the child once its worker is gone, even in the middle of a call.

    A worker killed with SIGKILL cannot stop its children. Its leases expire
    and the jobs run again elsewhere, so a call that ran on would run twice.
    """
    while os.getppid() == parent:
        time.sleep(ORPHAN_CHECK_INTERVAL)
    os._exit(1)


def _run_request(app: Any, body: bytes, fence: int, attempt: int) -> RunOutcome:
    call = decode_task_call(body)
    task = app.get_task(call.task)
    backend = app.backend

    def report(fraction: float, message: str | None) -> None:
        backend.set_progress(call.job_id, fence, fraction, message)

    def poll_cancel() -> bool:
        return call.job_id in backend.cancel_requests([call.job_id])

    context = JobContext(
        call.job_id, task.name, task.options.queue, attempt, report, _poll_cancel=poll_cancel
    )
    try:
        return run_sync(task, call, context, app.max_message_size)
    except BaseException as exc:  # A crash here must reach the parent as an outcome.
        error = ErrorInfo(type(exc).__name__, f"process pool child pid {os.getpid()}: {exc}")
        return RunOutcome("error", error=error, retryable=True)
