"""Heartbeats: extend the leases of running jobs and pick up cancel requests."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sluicegate.backends.base import Backend
    from sluicegate.worker.core import Running, WorkerCore

logger = logging.getLogger(__name__)

#: Seconds between two heartbeats at most; shorter leases beat faster.
MAX_INTERVAL = 0.5

#: A lease is extended once less than this share of it remains.
EXTEND_BELOW = 2 / 3


class Heartbeat:
    """Extends leases before they expire and forwards cancel requests to running jobs.

    :meth:`beat` makes blocking backend calls, so a worker runs it where its
    other backend calls run. A sync job sees ``job_context().cancelled``
    turn true and decides itself; the worker cancels an async job on its loop.
    """

    def __init__(self, worker: WorkerCore) -> None:
        self.worker = worker
        self.interval = min(MAX_INTERVAL, worker.lease / 4)

    def beat(self, entries: list[Running]) -> list[Running]:
        """Extend the leases due among ``entries``; return those newly asked to cancel."""
        if not entries:
            return []
        try:
            cancelled = self._forward_cancels(entries)
            self._extend(entries)
        except Exception:
            logger.exception("heartbeat failed worker=%s", self.worker.name)
            return []
        return cancelled

    def _forward_cancels(self, entries: list[Running]) -> list[Running]:
        return forward_cancels(self.worker.backend, entries)

    def _extend(self, entries: list[Running]) -> None:
        now = time.time()
        due = []
        for entry in entries:
            lease = entry.task.options.lease if entry.task else self.worker.app.lease
            if entry.delivery.lease_until - now < lease * EXTEND_BELOW:
                due.append((entry, lease))
        for lease in {lease for _, lease in due}:
            batch = [entry.delivery for entry, entry_lease in due if entry_lease == lease]
            held = self.worker.backend.extend(batch, lease)
            for delivery, ok in zip(batch, held, strict=True):
                if not ok:
                    logger.warning(
                        "lease lost, the job's outcome will be rejected job_id=%s fence=%d",
                        delivery.message_id,
                        delivery.fence,
                    )


def forward_cancels(backend: Backend, entries: list[Running]) -> list[Running]:
    """Read the cancel requests of ``entries``' jobs; return the entries newly asked to cancel.

    Each such entry's job context turns ``cancelled``. A blocking backend call.
    """
    ids = [e.delivery.message_id for e in entries]
    requested = backend.cancel_requests(ids)
    cancelled = []
    for entry in entries:
        context = entry.context
        if entry.delivery.message_id not in requested or context is None:
            continue
        if context._cancel_requested:
            continue
        context.request_cancel()
        logger.info("job cancel requested job_id=%s task=%s", context.job_id, context.task)
        cancelled.append(entry)
    return cancelled
