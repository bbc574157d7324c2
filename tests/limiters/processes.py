"""Functions that processes started with ``spawn`` run against a shared backend.

They live in a module of their own, imported by name, so that a spawned
child can unpickle them. Each puts a dict with its counts and any error on
``results``.
"""

from __future__ import annotations

import time
from typing import Any

from conformance_backends import BackendTarget

from sluicegate.ratelimit import RateLimiter
from sluicegate.retry_budget import RetryBudget


def take_tokens(
    target: BackendTarget, rate: str, duration: float, start: Any, results: Any
) -> None:
    """Call ``try_acquire`` for ``duration`` seconds; report each grant's time bounds.

    A grant happened at a clock reading between the ``before`` and ``after``
    times reported for it.
    """
    outcome: dict[str, Any] = {"grants": [], "refusals": 0, "error": None}
    backend = target.open()
    limiter = RateLimiter("shared", rate, backend)
    try:
        start.wait(timeout=60)
        deadline = time.time() + duration
        while (before := time.time()) < deadline:
            wait = limiter.try_acquire()
            if wait == 0.0:
                outcome["grants"].append((before, time.time()))
            else:
                outcome["refusals"] += 1
                # The limiter's own wait, bounded by the end of the run.
                time.sleep(min(wait, max(0.0, deadline - time.time())))
    except Exception as exc:
        outcome["error"] = repr(exc)
    finally:
        backend.close()
        results.put(outcome)


def request_retries(
    target: BackendTarget, attempts: int, delay: float, start: Any, results: Any
) -> None:
    """Call ``admit_retry(delay)`` ``attempts`` times; report the delays returned."""
    outcome: dict[str, Any] = {"delays": [], "error": None}
    backend = target.open()
    budget = RetryBudget("shared", backend)
    try:
        start.wait(timeout=60)
        outcome["delays"] = [budget.admit_retry(delay) for _ in range(attempts)]
    except Exception as exc:
        outcome["error"] = repr(exc)
    finally:
        backend.close()
        results.put(outcome)
