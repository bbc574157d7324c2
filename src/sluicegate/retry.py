"""Retry policy: exponential backoff with full jitter and a cap."""

from __future__ import annotations

import random
from dataclasses import dataclass

from sluicegate.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff: attempt ``n`` waits up to ``base * factor**(n-1)`` seconds.

    With ``jitter="full"`` the wait is drawn uniformly from zero to that
    ceiling (capped at ``cap``), which spreads the retries of many failing
    jobs instead of sending them back together. ``jitter="none"`` waits the
    ceiling itself.
    """

    base: float = 1.0
    factor: float = 2.0
    cap: float = 300.0
    jitter: str = "full"

    def __post_init__(self) -> None:
        if self.base <= 0:
            raise ConfigurationError(f"backoff base must be positive, got {self.base!r}")
        if self.factor < 1:
            raise ConfigurationError(f"backoff factor must be at least 1, got {self.factor!r}")
        if self.cap < self.base:
            raise ConfigurationError(
                f"backoff cap must be at least base ({self.base!r}), got {self.cap!r}"
            )
        if self.jitter not in ("full", "none"):
            raise ConfigurationError(
                f"backoff jitter must be 'full' or 'none', got {self.jitter!r}"
            )

    def ceiling(self, attempt: int) -> float:
        """Return the longest wait, in seconds, after failed attempt ``attempt`` (from 1)."""
        exponent = min(max(attempt - 1, 0), 64)
        return float(min(self.cap, self.base * self.factor**exponent))

    def delay(self, attempt: int) -> float:
        """Return the wait, in seconds, before the retry that follows ``attempt``."""
        ceiling = self.ceiling(attempt)
        return random.uniform(0, ceiling) if self.jitter == "full" else ceiling

    def spread(self, seconds: float) -> float:
        """Return a random extra wait from 0 to ``seconds`` with full jitter, else 0.

        Jobs held back together (by an open breaker) add it to their common
        wait, so that they do not all come back at the same moment.
        """
        return random.uniform(0, max(seconds, 0.0)) if self.jitter == "full" else 0.0
