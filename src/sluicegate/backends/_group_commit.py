"""Group commit: concurrent enqueues of one process share one SQLite transaction.

A durable commit waits for an fsync, a few milliseconds on most disks, and
SQLite admits one writer at a time. When many threads enqueue at once (an
API server under load), each paying its own fsync in turn caps the process
at a few hundred enqueues a second and queues them behind one another.

Here the first caller to arrive becomes the leader: it takes every call
waiting at that moment, runs each one inside its own savepoint of a single
transaction and commits once. A call that raises (``QueueFull``, a bad
idempotency key) rolls back to its savepoint and gets its own exception;
the others are committed. If the commit itself fails, every call of the
batch gets that exception, since none of them is durable. Callers that
arrive while the leader works wait for it. When it finishes, the first of
them leads the next batch, so no thread keeps doing the work of others.

A lone caller runs its call at once in a transaction of its own, with no
savepoint (rolling it back whole undoes the same writes) and none of the
hand-over objects that waiting callers need: it pays for two uncontended
lock acquisitions. A durable commit sleeps in fdatasync, and the code that
runs after it finds cold CPU caches, so every object and call on this path
costs several times what it costs in a warm loop.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

#: Maximum calls committed in one transaction.
MAX_BATCH = 256

#: ``work(conn, now)`` returns its result and whether it made a message ready now.
Work = Callable[[sqlite3.Connection, float], tuple[T, bool]]


class _Call(Generic[T]):
    __slots__ = ("done", "error", "lead", "ready", "result", "work")

    def __init__(self, work: Work[T]) -> None:
        self.work = work
        self.done = threading.Event()
        self.lead = False  # set with ``done`` when this call must lead the next batch
        self.result: T | None = None
        self.ready = False
        self.error: BaseException | None = None


class GroupCommit:
    """Runs calls of ``work(conn, now)`` in shared write transactions.

    Parameters:
      begin: opens a write transaction (``BEGIN IMMEDIATE``) and returns its
        connection.
      finish: ``finish(conn, commit)`` commits the transaction, or rolls it
        back when ``commit`` is false.
      clock: the time passed to each call, read once the write lock is held.
      after_commit: called once after each successful commit with whether any
        call of the batch made a message ready.
    """

    def __init__(
        self,
        begin: Callable[[], sqlite3.Connection],
        finish: Callable[[sqlite3.Connection, bool], None],
        clock: Callable[[], float],
        after_commit: Callable[[bool], None],
    ) -> None:
        self._begin = begin
        self._finish = finish
        self._clock = clock
        self._after_commit = after_commit
        self._lock = threading.Lock()
        self._waiting: list[_Call[Any]] = []
        self._leading = False

    def run(self, work: Work[T], solo: Callable[[], T] | None = None) -> T:
        """Run ``work`` in a transaction shared with concurrent calls; return its result.

        ``solo``, if given, runs instead when no other call is waiting or
        running, and opens and ends its own transactions.
        """
        with self._lock:
            alone = not self._leading
            self._leading = True
            if not alone:
                call: _Call[T] = _Call(work)
                self._waiting.append(call)
        if alone:
            try:
                return solo() if solo is not None else self._run_alone(work)
            finally:
                self._hand_over()
        call.done.wait()
        if call.lead:
            self._lead()
        if call.error is not None:
            raise call.error
        return call.result  # type: ignore[return-value]

    def run_if_idle(self, task: Callable[[], None]) -> bool:
        """Run ``task`` as the leader if no call is running or waiting; return whether it ran.

        Calls that arrive meanwhile wait for it, as for any leader.
        """
        with self._lock:
            if self._leading:
                return False
            self._leading = True
        try:
            task()
        finally:
            self._hand_over()
        return True

    def _run_alone(self, work: Work[T]) -> T:
        """Commit one call without a savepoint: its error rolls back the transaction."""
        conn = self._begin()
        try:
            result, ready = work(conn, self._clock())
        except BaseException:
            self._finish(conn, False)
            raise
        self._finish(conn, True)
        self._after_commit(ready)
        return result

    def _hand_over(self) -> None:
        """Give the lead to the first waiting call, or release it if none waits."""
        with self._lock:
            successor = self._waiting[0] if self._waiting else None
            self._leading = successor is not None
        if successor is not None:
            successor.lead = True
            successor.done.set()

    def _lead(self) -> None:
        with self._lock:
            batch = self._waiting[:MAX_BATCH]
            del self._waiting[:MAX_BATCH]
        try:
            self._commit(batch)
        finally:
            for call in batch:
                call.done.set()
            self._hand_over()

    def _commit(self, batch: list[_Call[Any]]) -> None:
        try:
            conn = self._begin()
            try:
                # Read once the write lock is held, so that the wait for it does not age `now`.
                now = self._clock()
                for call in batch:
                    conn.execute("SAVEPOINT enqueue_call")
                    try:
                        call.result, call.ready = call.work(conn, now)
                    except Exception as exc:
                        conn.execute("ROLLBACK TO enqueue_call")
                        call.error = exc
                    conn.execute("RELEASE enqueue_call")
            except BaseException:
                self._finish(conn, False)
                raise
            self._finish(conn, True)
        except BaseException as exc:
            for call in batch:
                call.error = call.error or exc
            if not isinstance(exc, Exception):
                raise
            return
        self._after_commit(any(call.ready and call.error is None for call in batch))
