"""Admission control: the ``retry_after`` that a rejected producer should wait."""

from __future__ import annotations

#: Bounds on ``retry_after``, in seconds. Never zero, so a client never spins.
MIN_RETRY_AFTER = 0.1
MAX_RETRY_AFTER = 60.0

#: ``retry_after`` when the queue completed nothing recently, so no rate is known.
UNKNOWN_RATE_RETRY_AFTER = 5.0


def estimate_retry_after(excess: int, completed: int, window: float) -> float:
    """Estimate the seconds until ``excess`` messages drain, from a recent rate.

    ``completed`` messages were settled over the last ``window`` seconds.
    The result is clamped to [``MIN_RETRY_AFTER``, ``MAX_RETRY_AFTER``].
    """
    if completed <= 0 or window <= 0:
        return UNKNOWN_RATE_RETRY_AFTER
    rate = completed / window
    return min(max(max(excess, 1) / rate, MIN_RETRY_AFTER), MAX_RETRY_AFTER)
