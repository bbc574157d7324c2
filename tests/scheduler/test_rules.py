"""Fire times of cron and interval rules, across both DST changes of two zones."""

from __future__ import annotations

import datetime as dt
import itertools
import re
from collections import Counter
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from sluicegate import ConfigurationError
from sluicegate.schedule import CronRule, IntervalRule, build_rule, iso_utc

from .support import utc

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def fires_between(
    rule: CronRule | IntervalRule, start: dt.datetime, end: dt.datetime
) -> list[dt.datetime]:
    """Return every fire time in ``(start, end]`` by walking ``next_fire``."""
    fires: list[dt.datetime] = []
    moment = rule.next_fire(start)
    while moment <= end:
        fires.append(moment)
        moment = rule.next_fire(moment)
    return fires


def local_dates(fires: list[dt.datetime], zone: ZoneInfo) -> Counter[dt.date]:
    return Counter(fire.astimezone(zone).date() for fire in fires)


# zone, daily time, the fire on the spring-forward day and on the fall-back day (UTC)
DAILY_CASES = [
    (BERLIN, "30 2", utc(2024, 3, 31, 1, 30), utc(2024, 10, 27, 0, 30)),
    (NEW_YORK, "30 2", utc(2024, 3, 10, 7, 30), utc(2024, 11, 3, 7, 30)),
    (NEW_YORK, "30 1", utc(2024, 3, 10, 6, 30), utc(2024, 11, 3, 5, 30)),
]


@pytest.mark.parametrize(("zone", "clock_time", "spring_fire", "fall_fire"), DAILY_CASES)
def test_daily_fires_once_per_local_day_for_a_year(
    zone: ZoneInfo, clock_time: str, spring_fire: dt.datetime, fall_fire: dt.datetime
) -> None:
    spring = spring_fire.astimezone(zone).date()
    fall = fall_fire.astimezone(zone).date()
    rule = CronRule(f"{clock_time} * * *", zone)
    fires = fires_between(rule, utc(2023, 12, 31, 12), utc(2024, 12, 31, 12))

    per_day = local_dates(fires, zone)
    assert len(fires) == 366
    assert set(per_day.values()) == {1}
    assert [f for f in fires if f.astimezone(zone).date() == spring] == [spring_fire]
    assert [f for f in fires if f.astimezone(zone).date() == fall] == [fall_fire]
    gaps = {b - a for a, b in itertools.pairwise(fires)}
    assert gaps <= {dt.timedelta(hours=h) for h in (23, 24, 25)}


def test_nonexistent_time_fires_an_hour_later_in_local_time() -> None:
    rule = CronRule("30 2 * * *", BERLIN)
    fire = rule.next_fire(utc(2024, 3, 30, 12))
    assert fire.astimezone(BERLIN).strftime("%H:%M %Z") == "03:30 CEST"


def test_repeated_time_fires_at_first_occurrence() -> None:
    rule = CronRule("30 2 * * *", BERLIN)
    fire = rule.next_fire(utc(2024, 10, 26, 12))
    assert fire.astimezone(BERLIN).strftime("%H:%M %Z") == "02:30 CEST"
    assert rule.next_fire(fire) == utc(2024, 10, 28, 1, 30)


@pytest.mark.parametrize(
    ("zone", "start"),
    [(BERLIN, utc(2024, 3, 30, 23)), (BERLIN, utc(2024, 10, 26, 22)),
     (NEW_YORK, utc(2024, 3, 10, 5)), (NEW_YORK, utc(2024, 11, 3, 4))],
)  # fmt: skip
def test_quarter_hour_job_keeps_real_time_rhythm(zone: ZoneInfo, start: dt.datetime) -> None:
    rule = CronRule("*/15 * * * *", zone)
    fires = fires_between(rule, start, start + dt.timedelta(hours=4))
    expected = [start + dt.timedelta(minutes=15 * k) for k in range(1, 17)]
    assert fires == expected


@pytest.mark.parametrize(
    ("zone", "day", "count"),
    [(BERLIN, dt.date(2024, 3, 31), 23), (BERLIN, dt.date(2024, 10, 27), 25),
     (NEW_YORK, dt.date(2024, 3, 10), 23), (NEW_YORK, dt.date(2024, 11, 3), 25)],
)  # fmt: skip
def test_hourly_job_fires_every_real_hour(zone: ZoneInfo, day: dt.date, count: int) -> None:
    rule = CronRule("0 * * * *", zone)
    midnight = utc(day.year, day.month, day.day)
    fires = fires_between(rule, midnight - dt.timedelta(days=1), midnight + dt.timedelta(days=2))
    on_day = [f for f in fires if f.astimezone(zone).date() == day]
    assert len(on_day) == count
    gaps = {b - a for a, b in itertools.pairwise(fires)}
    assert gaps == {dt.timedelta(hours=1)}


def test_fixed_hour_job_skips_second_occurrence() -> None:
    rule = CronRule("*/30 2 * * *", BERLIN)
    fires = fires_between(rule, utc(2024, 10, 26, 12), utc(2024, 10, 27, 12))
    assert fires == [utc(2024, 10, 27, 0, 0), utc(2024, 10, 27, 0, 30)]


def test_fixed_hour_job_in_gap_fires_once() -> None:
    rule = CronRule("*/30 2 * * *", BERLIN)
    fires = fires_between(rule, utc(2024, 3, 30, 12), utc(2024, 3, 31, 12))
    assert fires == [utc(2024, 3, 31, 1, 0), utc(2024, 3, 31, 1, 30)]


def test_daily_job_around_new_york_changes() -> None:
    rule = CronRule("0 17 * * *", NEW_YORK)
    autumn = fires_between(rule, utc(2024, 11, 2, 16), utc(2024, 11, 5, 17))
    spring = fires_between(rule, utc(2024, 3, 9, 17), utc(2024, 3, 12, 16))
    assert autumn == [utc(2024, 11, 2, 21), utc(2024, 11, 3, 22), utc(2024, 11, 4, 22)]
    assert spring == [utc(2024, 3, 9, 22), utc(2024, 3, 10, 21), utc(2024, 3, 11, 21)]


EXPRESSIONS = ["*/15 * * * *", "0 * * * *", "30 2 * * *", "*/20 1-3 * * *"]


@pytest.mark.parametrize("expression", EXPRESSIONS)
@pytest.mark.parametrize("zone", [BERLIN, NEW_YORK])
def test_latest_fire_walks_back_the_same_fires(expression: str, zone: ZoneInfo) -> None:
    rule = CronRule(expression, zone)
    for start in (utc(2024, 3, 8), utc(2024, 10, 25)):
        end = start + dt.timedelta(days=10)
        forward = fires_between(rule, start, end)
        backward: list[dt.datetime] = []
        moment = rule.latest_fire(end)
        while moment is not None and moment > start:
            backward.append(moment)
            moment = rule.latest_fire(moment - dt.timedelta(microseconds=1))
        assert backward[::-1] == forward


def test_latest_fire_includes_its_argument() -> None:
    rule = CronRule("0 3 * * *", ZoneInfo("UTC"))
    assert rule.latest_fire(utc(2024, 5, 1, 3)) == utc(2024, 5, 1, 3)
    assert rule.next_fire(utc(2024, 5, 1, 3)) == utc(2024, 5, 2, 3)


def test_cron_aliases() -> None:
    assert CronRule("@hourly", BERLIN).expression == "0 * * * *"
    assert CronRule("@daily", BERLIN).expression == "0 0 * * *"


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("0 3 * *", "expected 5 fields"),
        ("0 3 * * * 5", "expected 5 fields"),
        ("61 * * * *", "invalid cron expression '61 * * * *'"),
        ("0 0 31 2 *", "never fires"),
        ("", "expected 5 fields"),
    ],
)
def test_invalid_cron_names_expression(expression: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        CronRule(expression, BERLIN)


def test_interval_anchored_at_epoch() -> None:
    rule = IntervalRule(dt.timedelta(minutes=5))
    first = rule.next_fire(utc(2024, 6, 1, 12, 3, 17))
    assert first == utc(2024, 6, 1, 12, 5)
    assert rule.next_fire(first) == utc(2024, 6, 1, 12, 10)
    assert rule.latest_fire(utc(2024, 6, 1, 12, 9, 59)) == first


def test_interval_ignores_dst() -> None:
    rule = IntervalRule(dt.timedelta(hours=1), timezone=BERLIN)
    fires = fires_between(rule, utc(2024, 10, 26, 22), utc(2024, 10, 27, 4))
    assert len(fires) == 6


def test_interval_from_start_in_other_zone() -> None:
    start = dt.datetime(2024, 6, 1, 9, 0, 7, tzinfo=BERLIN)
    rule = IntervalRule(dt.timedelta(seconds=90), start)
    assert rule.next_fire(utc(2024, 1, 1)) == utc(2024, 6, 1, 7, 0, 7)
    assert rule.next_fire(utc(2024, 6, 1, 7, 0, 7)) == utc(2024, 6, 1, 7, 1, 37)
    assert rule.latest_fire(utc(2024, 6, 1, 7)) is None


def test_interval_rejects_naive_start() -> None:
    with pytest.raises(ConfigurationError, match="has no time zone"):
        IntervalRule(dt.timedelta(minutes=1), dt.datetime(2024, 1, 1))


def test_interval_rejects_sub_second() -> None:
    with pytest.raises(ConfigurationError, match="at least 1 second"):
        IntervalRule(dt.timedelta(milliseconds=500))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cron": None, "every": None}, "exactly one of cron= or every="),
        ({"cron": "0 * * * *", "every": dt.timedelta(minutes=1)}, "exactly one of"),
        ({"cron": "0 * * * *", "start": utc(2024, 1, 1)}, "start= applies to every="),
        ({"cron": "0 * * * *", "timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
    ],
)
def test_build_rule_rejects(options: dict[str, Any], message: str) -> None:
    arguments = {"cron": None, "every": None, "timezone": "UTC", "start": None, **options}
    with pytest.raises(ConfigurationError, match=message):
        build_rule(**arguments)


def test_iso_utc_format() -> None:
    assert iso_utc(dt.datetime(2024, 3, 31, 3, 30, tzinfo=BERLIN)) == "2024-03-31T01:30:00Z"
    assert iso_utc(utc(2024, 1, 1, 0, 0, 1, 500)) == "2024-01-01T00:00:01.000500Z"
