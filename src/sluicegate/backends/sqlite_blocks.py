"""Blocks of enqueue slots: how a SQLite producer enqueues one job at a time cheaply.

A durable enqueue that also updates the queue's counter row costs a second
statement and a fourth WAL page. So a producer claims a block of slots in the
queue's stored length in one transaction, and its next enqueues insert their
message alone (see ``sqlite_schema`` for how the bound stays exact).

A block is used for at most :data:`BLOCK_SECONDS`. Then its used slots are
counted in the queue's enqueue rate and its unused ones go back to the queue.
That happens when the next block is claimed, when the backend closes and at
interpreter exit. For a producer that stopped enqueueing, a
:class:`BlockReturner` thread does it once the block expires.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

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


class BlockReturner:
    """A daemon thread that gives back the blocks a producer stopped using.

    ``return_expired()`` gives back the expired blocks if it can. It returns
    whether it ran (False while enqueues hold the group commit) and the
    monotonic time at which the next block expires, or None if none is left.
    """

    def __init__(self, return_expired: Callable[[], tuple[bool, float | None]]) -> None:
        self._return_expired = return_expired
        self._wake = threading.Event()
        self._closed = False
        self._waiting_for_claims = False  # True while no block is known to expire
        self._thread = threading.Thread(
            target=self._run, name="sluicegate-block-returner", daemon=True
        )
        self._thread.start()

    def claimed(self) -> None:
        """Note that a block was claimed, so that the thread waits for its expiry.

        A thread already waiting for an earlier expiry is left alone: it finds
        the new block when it wakes.
        """
        if self._waiting_for_claims:
            self._wake.set()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait up to ``timeout`` seconds for a return it has begun."""
        self._closed = True
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._closed:
            # Set before looking, so that a block claimed during the look wakes the wait.
            self._waiting_for_claims = True
            try:
                ran, next_expiry = self._return_expired()
            except Exception:
                # The database is locked or closing. The slots stay counted until a
                # later try, or until an enqueue near the bound recounts the queue.
                logger.warning(
                    "returning expired enqueue blocks failed, retrying in %.0f s",
                    ERROR_RETRY_SECONDS,
                    exc_info=True,
                )
                ran, next_expiry = True, time.monotonic() + ERROR_RETRY_SECONDS
            timeout: float | None = None
            if not ran:
                timeout = RETRY_SECONDS
            elif next_expiry is not None:
                timeout = max(next_expiry - time.monotonic(), 0.0) + 0.01
            if timeout is not None:
                self._waiting_for_claims = False
            self._wake.wait(timeout)
            self._wake.clear()
