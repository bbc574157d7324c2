"""The checks a reserved job passes before its task function runs: a breaker and a rate limit.

A task declared with ``breaker="payments"`` or ``rate_limit="20/s"`` passes
its :class:`TaskGuard` before each attempt. The guard requests a ticket
from the shared breaker and a slot from the shared token bucket. Both are
kept in the store, so every worker process on every host reads the same ones.

The guard returns one of two verdicts:

- :class:`Admitted`: run the attempt, after waiting ``wait`` seconds in
  memory for the reserved rate-limit slot (at most ``MAX_HOLD``). The
  worker holds the job meanwhile and its heartbeat keeps the lease.
- :class:`Deferral`: do not run it now. The worker gives the job back to
  its queue with ``delay``, its attempt count unchanged (``Action.DEFER``),
  so a job that waits out an open breaker or a busy rate limit spends no
  retry and no worker sits on it.

The attempt's outcome goes back to the breaker with :meth:`TaskGuard.settle`.
The guard's store calls block, so the worker runs them on its guard thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sluicegate.breaker import Breaker
from sluicegate.breaker_state import Ticket
from sluicegate.errors import BreakerOpen
from sluicegate.ratelimit import RateLimiter
from sluicegate.retry import Backoff
from sluicegate.task import Task

logger = logging.getLogger(__name__)

#: Maximum wait, in seconds, for a rate-limit slot during which a worker keeps the job.
#: A job with a longer wait goes back to its queue instead.
MAX_HOLD = 0.5

#: Fraction of a breaker's remaining open time added at random to each deferral (with
#: the task's backoff jitter), so that deferred jobs do not all come back at once.
DEFER_SPREAD = 0.25

#: Minimum deferral, in seconds.
MIN_DEFER = 0.05


@dataclass(frozen=True, slots=True)
class Admitted:
    """Run the attempt after ``wait`` seconds; hand ``ticket`` back to :meth:`TaskGuard.settle`."""

    ticket: Ticket | None
    wait: float = 0.0


@dataclass(frozen=True, slots=True)
class Deferral:
    """Give the job back to its queue for ``delay`` seconds; ``reason`` goes into its record."""

    delay: float
    reason: str


class TaskGuard:
    """The breaker and the rate limit of one task; either may be None.

    ``backoff`` is the task's retry policy, whose jitter spreads deferrals.
    """

    def __init__(
        self,
        task_name: str,
        breaker: Breaker | None,
        limiter: RateLimiter | None,
        backoff: Backoff,
    ) -> None:
        self.task_name = task_name
        self.breaker = breaker
        self.limiter = limiter
        self.backoff = backoff

    def admit(self) -> Admitted | Deferral:
        """Ask the breaker, then the rate limit, whether the attempt may run now."""
        ticket: Ticket | None = None
        if self.breaker is not None:
            try:
                ticket = self.breaker.acquire()
            except BreakerOpen as exc:
                delay = exc.retry_after + self.backoff.spread(exc.retry_after * DEFER_SPREAD)
                return Deferral(max(delay, MIN_DEFER), f"deferred by breaker {exc.name}")
        if self.limiter is None:
            return Admitted(ticket)
        granted, wait = self.limiter.reserve(MAX_HOLD, take_turn=True)
        if granted:
            return Admitted(ticket, wait)
        if ticket is not None and self.breaker is not None:
            self.breaker.cancel(ticket)  # A probe slot the job will not use goes back.
        return Deferral(max(wait, MIN_DEFER), f"deferred by rate limit {self.limiter.rate}")

    def settle(self, ticket: Ticket | None, failure: bool | None) -> None:
        """Count an admitted attempt with the breaker.

        ``failure`` is True for an exception of the breaker's ``failure_types``
        (or a timeout, when those include ``TaskTimeout``), False for a
        success, and None for an outcome that counts as neither.
        """
        if ticket is None or self.breaker is None:
            return
        self.breaker.record_outcome(ticket, failure)


def guard_for(task: Task[Any, Any]) -> TaskGuard | None:
    """Return the guard of ``task``, or None when it has no breaker and no rate limit."""
    options = task.options
    if options.breaker is None and options.rate_limit is None:
        return None
    app = task.app
    breaker = None
    if options.breaker is not None:
        if options.breaker not in app.breakers:
            logger.warning(
                "task names a breaker the app does not declare, so it has the default "
                "options task=%s breaker=%s declared=%s",
                task.name,
                options.breaker,
                ",".join(sorted(app.breakers)) or "-",
            )
        breaker = app.breaker(options.breaker)  # the declared one, else the defaults
    return TaskGuard(task.name, breaker, rate_limiter_of(task), options.backoff)


def rate_limiter_of(task: Task[Any, Any]) -> RateLimiter | None:
    """Return the token bucket of ``task``'s ``rate_limit``, named ``task:<name>``, or None."""
    rate = task.options.rate_limit
    if rate is None:
        return None
    app = task.app
    return RateLimiter(f"task:{task.name}", rate, lambda: app.backend)
