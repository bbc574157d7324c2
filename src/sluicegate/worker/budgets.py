"""The worker's side of the retry budgets: count first attempts, stretch retries past the budget.

Each queue served has a :class:`sluicegate.retry_budget.RetryBudget` (unless
the app turned it off with ``app.retry_budget(queue, ratio=None)``). The
worker counts in memory every first attempt it starts. Before each exchange
with the backend, :meth:`RetryBudgets.apply` passes every retry it is about
to settle through its queue's budget. A retry within the budget keeps its
backoff delay, and one past it waits longer. Counts reach the store at
most about once a second per worker, so the budget costs a busy worker no
write per job.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from sluicegate.broker import Action, Settlement
from sluicegate.retry_budget import RetryBudget

logger = logging.getLogger(__name__)

#: Seconds between two flushes of first-attempt counts to the store.
FLUSH_INTERVAL = 1.0


class RetryBudgets:
    """The retry budgets of the queues one worker serves, made on first use."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._budgets: dict[str, RetryBudget | None] = {}
        self._lock = threading.Lock()
        self._flushed_at = time.monotonic()

    def budget(self, queue: str) -> RetryBudget | None:
        """Return the budget of ``queue``, or None when the app turned it off."""
        with self._lock:
            if queue not in self._budgets:
                self._budgets[queue] = self.app.retry_budget(queue)
            return self._budgets[queue]

    def note_first_attempt(self, queue: str) -> None:
        """Count one first attempt of ``queue`` in memory (cheap; called for every job)."""
        budget = self.budget(queue)
        if budget is not None:
            budget.note_first_attempt()

    def apply(self, settlements: Sequence[Settlement]) -> list[Settlement]:
        """Return ``settlements`` with each retry's delay stretched where its budget is spent.

        Blocks on the store; the worker calls it on its I/O thread.
        """
        result = list(settlements)
        for index, settlement in enumerate(result):
            if settlement.action is not Action.RETRY or settlement.job is None:
                continue
            budget = self.budget(settlement.delivery.queue)
            if budget is None:
                continue
            try:
                delay = budget.admit_retry(settlement.delay)
            except Exception as exc:
                # A budget that cannot be read lets the retry through at its backoff
                # rather than stopping every retry of the queue.
                logger.error(
                    "retry budget check failed, retry keeps its delay job_id=%s queue=%s error=%r",
                    settlement.delivery.message_id,
                    settlement.delivery.queue,
                    exc,
                )
                continue
            if delay <= settlement.delay:
                continue
            queue = settlement.delivery.queue
            logger.warning(
                "retry budget spent, retry delayed job_id=%s queue=%s delay_s=%.3f was_s=%.3f",
                settlement.delivery.message_id,
                queue,
                delay,
                settlement.delay,
            )
            note = f"retry delayed {delay:.1f}s by the retry budget of queue {queue}"
            update = dataclasses.replace(settlement.job, note=note)
            result[index] = dataclasses.replace(settlement, job=update, delay=delay)
        if time.monotonic() - self._flushed_at >= FLUSH_INTERVAL:
            self.flush()
        return result

    def flush(self) -> None:
        """Write the first-attempt counts kept in memory to the store."""
        self._flushed_at = time.monotonic()
        with self._lock:
            budgets = [b for b in self._budgets.values() if b is not None]
        for budget in budgets:
            try:
                budget.flush()
            except Exception as exc:
                logger.error("retry budget counts not written queue=%s error=%r", budget.queue, exc)
