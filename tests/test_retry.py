"""Backoff policy and the retry-after estimate."""

from __future__ import annotations

import pytest

from sluicegate import Backoff, ConfigurationError
from sluicegate.backpressure import (
    MAX_RETRY_AFTER,
    MIN_RETRY_AFTER,
    UNKNOWN_RATE_RETRY_AFTER,
    estimate_retry_after,
)


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(1, 1.0), (2, 2.0), (3, 4.0), (9, 256.0), (10, 300.0), (500, 300.0)],
)
def test_backoff_ceiling_grows_then_caps(attempt: int, ceiling: float) -> None:
    assert Backoff(base=1, factor=2, cap=300).ceiling(attempt) == ceiling


def test_backoff_full_jitter_stays_within_ceiling() -> None:
    backoff = Backoff(base=0.5, factor=3, cap=60)
    delays = [backoff.delay(4) for _ in range(2000)]
    assert min(delays) >= 0.0
    assert max(delays) <= backoff.ceiling(4)
    # Full jitter spreads the delays over the whole range, not near the top.
    assert min(delays) < backoff.ceiling(4) * 0.1
    assert max(delays) > backoff.ceiling(4) * 0.9


def test_backoff_without_jitter_waits_ceiling() -> None:
    assert Backoff(base=2, jitter="none").delay(3) == 8.0


@pytest.mark.parametrize(
    "kwargs",
    [{"base": 0}, {"base": -1}, {"factor": 0.5}, {"base": 10, "cap": 5}, {"jitter": "half"}],
)
def test_backoff_rejects_invalid_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        Backoff(**kwargs)  # type: ignore[arg-type]


def test_retry_after_follows_drain_rate() -> None:
    # 600 completions in 60 s drain 10 per second, so 50 excess messages take 5 s.
    assert estimate_retry_after(50, 600, 60.0) == pytest.approx(5.0)


def test_retry_after_is_clamped() -> None:
    assert estimate_retry_after(1, 1_000_000, 60.0) == MIN_RETRY_AFTER
    assert estimate_retry_after(10_000, 1, 60.0) == MAX_RETRY_AFTER


def test_retry_after_without_rate_is_positive() -> None:
    assert estimate_retry_after(10, 0, 60.0) == UNKNOWN_RATE_RETRY_AFTER
    assert UNKNOWN_RATE_RETRY_AFTER > 0


def test_spread_full_jitter_stays_in_range() -> None:
    backoff = Backoff()
    spreads = [backoff.spread(2.0) for _ in range(200)]
    assert all(0.0 <= spread <= 2.0 for spread in spreads)
    assert len(set(spreads)) > 1


def test_spread_without_jitter_is_zero() -> None:
    assert Backoff(jitter="none").spread(5.0) == 0.0
    assert Backoff().spread(-1.0) == 0.0
