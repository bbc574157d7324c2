"""Rates: parsing ``COUNT/PERIOD`` text, bounds, the canonical text and the default burst."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sluicegate import ConfigurationError
from sluicegate.ratelimit import (
    MAX_COUNT,
    MAX_PER_SECOND,
    MAX_PERIOD,
    MIN_PERIOD,
    Rate,
    default_burst,
    parse_rate,
)

UNIT_SECONDS = {
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86_400.0,
    "day": 86_400.0,
    "days": 86_400.0,
}


@pytest.mark.parametrize(
    ("text", "count", "period"),
    [
        ("100/s", 100, 1.0),
        ("1000/m", 1000, 60.0),
        ("5/h", 5, 3600.0),
        ("10/2s", 10, 2.0),
        ("3/1.5m", 3, 90.0),
        ("1/100ms", 1, 0.1),
        ("20/d", 20, 86_400.0),
        ("7/second", 7, 1.0),
        (" 60 / min ", 60, 60.0),
        ("2/ 30 s", 2, 30.0),
        ("1/0.5s", 1, 0.5),
    ],
)
def test_parse_rate_accepts(text: str, count: int, period: float) -> None:
    rate = parse_rate(text)
    assert rate.count == count
    assert rate.period == pytest.approx(period)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "expected COUNT/PERIOD"),
        ("100", "expected COUNT/PERIOD"),
        ("/s", "expected COUNT/PERIOD"),
        ("100/", "expected COUNT/PERIOD"),
        ("1e3/s", "expected COUNT/PERIOD"),
        ("-5/s", "expected COUNT/PERIOD"),
        ("1.5/s", "expected COUNT/PERIOD"),
        ("10/-2s", "expected COUNT/PERIOD"),
        ("1_000/s", "expected COUNT/PERIOD"),
        ("\u0661\u0660/s", "expected COUNT/PERIOD"),
        ("10/S", "unknown unit 'S'"),
        ("10/M", "unknown unit 'M'"),
        ("10/week", "unknown unit 'week'"),
        ("0/s", "count must be an integer from 1"),
        ("10/0s", "period must be between"),
        ("1/0.0001s", "period must be between"),
        ("1/2d", "period must be between"),
        ("2000000/s", "per second, over the maximum"),
        ("9" * 40 + "/s", "count must be an integer from 1"),
    ],
)
def test_parse_rate_rejects(text: str, reason: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_rate(text)
    message = str(caught.value)
    assert reason in message
    assert repr(text)[:60] in message


@pytest.mark.parametrize("value", [None, 100, 1.5, b"100/s"])
def test_parse_rate_rejects_non_string(value: object) -> None:
    with pytest.raises(ConfigurationError, match="rate must be a string"):
        parse_rate(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("count", "period"),
    [
        (0, 1.0),
        (-1, 1.0),
        (True, 1.0),
        (1.5, 1.0),
        (MAX_COUNT + 1, MAX_PERIOD),
        (1, 0.0),
        (1, -1.0),
        (1, math.nan),
        (1, math.inf),
        (1, False),
        (1, MAX_PERIOD * 2),
        (1, MIN_PERIOD / 2),
        (2_000_000, 1.0),
    ],
)
def test_rate_rejects_out_of_bounds(count: object, period: object) -> None:
    with pytest.raises(ConfigurationError):
        Rate(count, period)  # type: ignore[arg-type]


def test_rate_stores_period_as_float() -> None:
    rate = Rate(10, 2)
    assert isinstance(rate.period, float)
    assert rate == Rate(10, 2.0)
    assert rate.per_second == 5.0


@pytest.mark.parametrize(
    ("rate", "text"),
    [
        (Rate(100, 1.0), "100/s"),
        (Rate(1000, 60.0), "1000/m"),
        (Rate(5, 3600.0), "5/h"),
        (Rate(20, 86_400.0), "20/d"),
        (Rate(10, 2.0), "10/2s"),
        (Rate(3, 120.0), "3/2m"),
        (Rate(3, 90.0), "3/90s"),
        (Rate(1, 0.5), "1/0.5s"),
        (Rate(1, 7200.0), "1/2h"),
    ],
)
def test_rate_text(rate: Rate, text: str) -> None:
    assert str(rate) == text


@pytest.mark.parametrize(
    ("text", "burst"),
    [
        ("100/s", 100),
        ("1000/m", 16),
        ("5/h", 1),
        ("10/2s", 5),
        ("1/s", 1),
        ("3/0.5s", 3),
        ("1000000/s", 1_000_000),
        ("59/m", 1),
    ],
)
def test_default_burst(text: str, burst: int) -> None:
    assert default_burst(parse_rate(text)) == burst


@st.composite
def valid_rates(draw: st.DrawFn) -> Rate:
    period = draw(st.floats(MIN_PERIOD, MAX_PERIOD, allow_nan=False, allow_infinity=False))
    largest_count = min(MAX_COUNT, math.floor(period * MAX_PER_SECOND))
    count = draw(st.integers(1, max(1, largest_count)))
    assume(count / period <= MAX_PER_SECOND)  # The product above may round up.
    return Rate(count, period)


@settings(max_examples=300, deadline=None)
@given(valid_rates())
def test_rate_text_round_trips(rate: Rate) -> None:
    assert parse_rate(str(rate)) == rate


@settings(max_examples=300, deadline=None)
@given(
    count=st.integers(0, 10**12),
    multiple=st.none() | st.integers(0, 100_000) | st.decimals(0, 1000, places=3),
    unit=st.sampled_from(sorted(UNIT_SECONDS)),
)
def test_parse_rate_matches_grammar(count: int, multiple: object, unit: str) -> None:
    text = f"{count}/{'' if multiple is None else multiple}{unit}"
    period = (1.0 if multiple is None else float(str(multiple))) * UNIT_SECONDS[unit]
    in_bounds = (
        1 <= count <= MAX_COUNT
        and MIN_PERIOD <= period <= MAX_PERIOD
        and count / period <= MAX_PER_SECOND
    )
    if in_bounds:
        assert parse_rate(text) == Rate(count, period)
    else:
        with pytest.raises(ConfigurationError, match="invalid rate"):
            parse_rate(text)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=30) | st.from_regex(r"\d+/\w*"))
def test_parse_rate_never_crashes(text: str) -> None:
    try:
        rate = parse_rate(text)
    except ConfigurationError as exc:
        assert repr(text)[:60] in str(exc)
    else:
        assert 1 <= rate.count <= MAX_COUNT
        assert MIN_PERIOD <= rate.period <= MAX_PERIOD
        assert rate.per_second <= MAX_PER_SECOND
