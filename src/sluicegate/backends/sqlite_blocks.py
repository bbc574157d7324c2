"""Blocks of enqueue slots: how a SQLite producer enqueues one job at a time cheaply.

A durable enqueue that also updates the queue's counter row costs a second
statement and a fourth WAL page. So a producer claims a block of slots in the
queue's stored length in one transaction, and its next enqueues insert their
message alone (see ``sqlite_schema`` for how the bound stays exact).

A block is used for at most :data:`BLOCK_SECONDS`. Then its used slots are
counted in the queue's enqueue rate and its unused ones go back to the queue.
That happens when the next block is claimed, when the backend closes and at
interpreter exit. For a producer that stopped enqueueing, the process's
:class:`BlockReturner` thread does it once the block expires.
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import threading
import time
import weakref
from typing import Protocol

from sluicegate import _forks
from sluicegate.broker import QueueBounds

logger = logging.getLogger(__name__)

#: Most slots a producer claims at once for one-by-one enqueues into a queue.
MAX_BLOCK = 64

#: Seconds a block is used for.
BLOCK_SECONDS = 2.0

#: A block takes at most this fraction of the room left under the bound, so that
#: producers in other processes find room too. With less room, each enqueue counts itself.
BLOCK_SHARE = 16

#: Seconds the returner waits before trying again while enqueues hold the group commit.
RETRY_SECONDS = 0.5

#: Seconds the returner waits after it failed to write, e.g. while the database is locked.
ERROR_RETRY_SECONDS = 5.0

#: Seconds the exit of the interpreter waits for running enqueues before giving blocks back.
EXIT_WAIT_SECONDS = 0.5


def new_claim_gen() -> int:
    """Return a ``claim_gen`` for a new or recounted queue row: 62 random bits."""
    return random.getrandbits(62)


def block_size(room: int) -> int:
    """Return the slots to claim, the new message's included, given the room under the bound."""
    size = min(MAX_BLOCK, room // BLOCK_SHARE)
    return size if size >= 2 else 1


class Block:
    """Slots of one queue's length that this process claimed and has not used yet."""

    __slots__ = ("bounds", "claim_gen", "expires", "left", "used")

    def __init__(self, bounds: QueueBounds, claim_gen: int, left: int) -> None:
        self.bounds = bounds
        self.claim_gen = claim_gen
        self.left = left
        self.used = 0
        self.expires = time.monotonic() + BLOCK_SECONDS


class BlockHolder(Protocol):
    """A backend that holds blocks, which :class:`BlockReturner` references weakly."""

    def _return_expired_blocks(self) -> tuple[bool, float | None]:
        """Give back the expired blocks if no enqueue runs.

        Returns whether it ran and the monotonic time at which the next block
        expires, or None if none is left.
        """

    def _return_all_blocks(self, wait: float) -> None:
        """Give back every block, waiting up to ``wait`` seconds for running enqueues."""


class BlockReturner:
    """One daemon thread per process that gives back the blocks producers stopped using.

    A backend registers with :meth:`claimed` when it claims a block. The
    thread keeps only weak references, so a backend that is no longer used
    drops out, and it sleeps until the next block expires, or with no block
    left, until the next claim. At interpreter exit every registered backend
    gives back all its blocks.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Held while the thread gives blocks back, and taken by fork(): a child made
        # while this thread held SQLite's write lock would find it held for good.
        self._working = threading.Lock()
        self._holders: dict[int, weakref.ref[BlockHolder]] = {}
        self._wake = threading.Event()
        self._waiting_for_claims = False  # True while no block is known to expire
        self._thread: threading.Thread | None = None
        self._generation = _forks.generation
        atexit.register(self._return_all)

    def claimed(self, holder: BlockHolder) -> None:
        """Note that ``holder`` claimed a block, so that the thread waits for its expiry.

        A thread already waiting for an earlier expiry is left alone: it finds
        the new block when it wakes.
        """
        with self._lock:
            if self._generation != _forks.generation:  # A forked child has no thread yet.
                self._holders, self._thread = {}, None
                self._generation = _forks.generation
            known = self._holders.get(id(holder))
            if known is None or known() is not holder:
                self._holders[id(holder)] = weakref.ref(holder)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sluicegate-block-returner", daemon=True
                )
                self._thread.start()
        if self._waiting_for_claims:
            self._wake.set()

    def forget(self, holder: BlockHolder) -> None:
        """Stop looking after ``holder``, which gives back its blocks itself."""
        with self._lock:
            known = self._holders.get(id(holder))
            if known is not None and known() is holder:
                del self._holders[id(holder)]

    def _live_holders(self) -> list[BlockHolder]:
        with self._lock:
            for key, ref in list(self._holders.items()):
                if ref() is None:
                    del self._holders[key]
            return [holder for ref in self._holders.values() if (holder := ref()) is not None]

    def _return_all(self) -> None:
        if self._generation != _forks.generation:
            return  # The holders belong to the parent process.
        for holder in self._live_holders():
            holder._return_all_blocks(EXIT_WAIT_SECONDS)

    def _run(self) -> None:
        while True:
            # Set before looking, so that a block claimed during the look wakes the wait.
            self._waiting_for_claims = True
            next_wake: float | None = None
            for holder in self._live_holders():
                try:
                    with self._working:
                        ran, next_expiry = holder._return_expired_blocks()
                except Exception:
                    # The database is locked or closing. The slots stay counted until a
                    # later try, or until an enqueue near the bound recounts the queue.
                    logger.warning(
                        "returning expired enqueue blocks failed, retrying in %.0f s",
                        ERROR_RETRY_SECONDS,
                        exc_info=True,
                    )
                    ran, next_expiry = True, time.monotonic() + ERROR_RETRY_SECONDS
                if not ran:
                    next_expiry = time.monotonic() + RETRY_SECONDS
                if next_expiry is not None:
                    next_wake = next_expiry if next_wake is None else min(next_wake, next_expiry)
                del holder  # Keep no strong reference while sleeping.
            timeout = None if next_wake is None else max(next_wake - time.monotonic(), 0) + 0.01
            if timeout is not None:
                self._waiting_for_claims = False
            self._wake.wait(timeout)
            self._wake.clear()


#: The returner of this process.
RETURNER = BlockReturner()


def _before_fork() -> None:
    RETURNER._working.acquire()
    RETURNER._lock.acquire()


def _after_fork_in_parent() -> None:
    RETURNER._lock.release()
    RETURNER._working.release()


def _after_fork_in_child() -> None:
    # The thread does not exist here; claimed() starts a new one.
    RETURNER._lock, RETURNER._working = threading.Lock(), threading.Lock()


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
)
