"""The scheduler on a fake clock: fires, catch-up, changed rules, restarts and leaders."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conformance_backends import FakeClock

from sluicegate import App
from sluicegate.backends.sqlite import SQLiteBackend
from sluicegate.schedule import CronRule, IntervalRule
from sluicegate.scheduler import Scheduler, read_state

from .support import fire_times, keyed_jobs, run_until, utc

NEW_YORK = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")

MakeScheduler = Callable[..., Scheduler]


@pytest.fixture
def make_scheduler(app: App, store: SQLiteBackend, clock: FakeClock) -> MakeScheduler:
    """Return a factory of schedulers on the app, the fake clock and its store."""

    def make(lease: float = 600.0, **options: object) -> Scheduler:
        return Scheduler(app, backend=store, clock=clock, lease=lease, **options)  # type: ignore[arg-type]

    return make


def test_new_schedule_waits_for_first_slot(
    app: App, make_scheduler: MakeScheduler, clock: FakeClock
) -> None:
    clock.now = utc(2024, 5, 1, 12, 50).timestamp()

    @app.periodic(cron="0 13 * * *", name="fresh")
    def fresh() -> None: ...

    scheduler = make_scheduler()
    assert run_until(scheduler, clock, utc(2024, 5, 1, 12, 59, 59)) == []
    fires = run_until(scheduler, clock, utc(2024, 5, 1, 13, 30))
    assert fire_times(fires) == ["2024-05-01T13:00:00Z"]


def test_every_slot_enqueued_once(
    app: App, make_scheduler: MakeScheduler, clock: FakeClock, db_path: Path
) -> None:
    @app.periodic(every=dt.timedelta(minutes=1), name="minutely", args=(7,))
    def minutely(value: int) -> int:
        return value

    fires = run_until(make_scheduler(), clock, utc(2024, 1, 1, 1))
    assert len(fires) == 60
    assert all(fire.created for fire in fires)
    counts = keyed_jobs(db_path, "schedule:minutely:")
    assert len(counts) == 60
    assert set(counts.values()) == {1}
    record = app.job(fires[0].job_id).record
    assert record.task == "minutely"
    assert record.idempotency_key == "schedule:minutely:2024-01-01T00:01:00Z"


def test_fire_is_logged_with_ids(
    app: App, make_scheduler: MakeScheduler, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    @app.periodic(every=dt.timedelta(minutes=1), name="logged")
    def logged() -> None: ...

    caplog.set_level(logging.INFO, logger="sluicegate.scheduler")
    scheduler = make_scheduler(holder="h1")
    fires = run_until(scheduler, clock, utc(2024, 1, 1, 0, 1))
    assert "leadership acquired holder=h1" in caplog.text
    line = f"schedule fired schedule=logged fire_time=2024-01-01T00:01:00Z job_id={fires[0].job_id}"
    assert line in caplog.text


def test_idle_scheduler_sleeps_until_renewal(
    app: App, make_scheduler: MakeScheduler, clock: FakeClock
) -> None:
    @app.periodic(cron="0 3 * * *", name="nightly")
    def nightly() -> None: ...

    scheduler = make_scheduler(lease=30.0)
    ticks = 0
    for _ in range(1000):
        result = scheduler.tick()
        ticks += 1
        if result.wake_at >= utc(2024, 1, 1, 1).timestamp():
            break
        clock.now = result.wake_at
    assert ticks <= 3600 / 10 + 2


CATCH_UP_CASES = [
    ("skip", 100, []),
    ("latest", 100, ["12:25"]),
    ("all", 100, ["12:15", "12:20", "12:25"]),
    ("all", 2, ["12:20", "12:25"]),
]


@pytest.mark.parametrize(("policy", "limit", "caught_up"), CATCH_UP_CASES)
def test_catch_up_after_gap(
    app: App,
    make_scheduler: MakeScheduler,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    policy: str,
    limit: int,
    caught_up: list[str],
) -> None:
    clock.now = utc(2024, 5, 1, 12, 0, 30).timestamp()

    @app.periodic(cron="*/5 * * * *", name="tick", catch_up=policy, max_catch_up=limit)  # type: ignore[arg-type]
    def tick() -> None: ...

    # Given a scheduler that fired 12:05 and 12:10 and then stopped
    first = make_scheduler()
    assert len(run_until(first, clock, utc(2024, 5, 1, 12, 11))) == 2
    first.step_down()

    # When a new one starts at 12:27:30, after three missed fires
    clock.now = utc(2024, 5, 1, 12, 27, 30).timestamp()
    caplog.set_level(logging.INFO, logger="sluicegate.scheduler")
    fires = run_until(make_scheduler(), clock, utc(2024, 5, 1, 12, 31))

    # Then the policy decides the catch-up, and 12:30 fires on time
    expected = [f"2024-05-01T{hhmm}:00Z" for hhmm in caught_up] + ["2024-05-01T12:30:00Z"]
    assert fire_times(fires) == expected
    if len(caught_up) < 3:
        assert f"schedule missed fires schedule=tick catch_up={policy}" in caplog.text


def test_skip_keeps_a_fire_late_within_grace(
    app: App, make_scheduler: MakeScheduler, clock: FakeClock
) -> None:
    clock.now = utc(2024, 5, 1, 12, 0, 30).timestamp()

    @app.periodic(cron="*/5 * * * *", name="tick")
    def tick() -> None: ...

    first = make_scheduler()
    run_until(first, clock, utc(2024, 5, 1, 12, 6))
    first.step_down()
    clock.now = utc(2024, 5, 1, 12, 10, 40).timestamp()
    fires = run_until(make_scheduler(), clock, utc(2024, 5, 1, 12, 11))
    assert fire_times(fires) == ["2024-05-01T12:10:00Z"]


def test_changed_rule_counts_from_now(
    app: App, make_scheduler: MakeScheduler, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    @app.periodic(cron="0 * * * *", name="report", catch_up="all")
    def report() -> None: ...

    scheduler = make_scheduler(lease=600.0)
    assert len(run_until(scheduler, clock, utc(2024, 1, 1, 2, 30))) == 2
    caplog.set_level(logging.INFO, logger="sluicegate.scheduler")

    # The definition changes in place at 05:10, with no fire since 02:00
    clock.now = utc(2024, 1, 1, 5, 10).timestamp()
    schedule = app.schedules["report"]
    app.schedules["report"] = dataclasses.replace(schedule, rule=CronRule("*/20 * * * *", BERLIN))
    fires = run_until(scheduler, clock, utc(2024, 1, 1, 5, 59))

    assert fire_times(fires) == ["2024-01-01T05:20:00Z", "2024-01-01T05:40:00Z"]
    assert "schedule definition changed" in caplog.text
    _, state = read_state(scheduler.backend, "report")
    assert state is not None
    assert state.fingerprint == app.schedules["report"].fingerprint


def test_changed_time_zone_is_a_changed_rule(app: App) -> None:
    @app.periodic(cron="0 3 * * *", timezone="Europe/Berlin", name="a")
    def a() -> None: ...

    @app.periodic(cron="0 3 * * *", timezone="America/New_York", name="b")
    def b() -> None: ...

    @app.periodic(every=dt.timedelta(minutes=5), name="c")
    def c() -> None: ...

    @app.periodic(every=dt.timedelta(minutes=5), start=utc(2024, 1, 1, 0, 1), name="d")
    def d() -> None: ...

    fingerprints = {s.fingerprint for s in app.schedules.values()}
    assert len(fingerprints) == 4


@pytest.mark.parametrize(
    "restart_at",
    [utc(2024, 1, 1, 0, 10, 0), utc(2024, 1, 1, 0, 10, 1), utc(2024, 1, 1, 0, 14, 59)],
)
def test_restart_neither_repeats_nor_skips(
    app: App, make_scheduler: MakeScheduler, clock: FakeClock, restart_at: dt.datetime
) -> None:
    @app.periodic(every=dt.timedelta(minutes=5), name="five")
    def five() -> None: ...

    first = make_scheduler()
    before = run_until(first, clock, utc(2024, 1, 1, 0, 10))
    first.step_down()
    clock.now = restart_at.timestamp()
    after = run_until(make_scheduler(), clock, utc(2024, 1, 1, 0, 20))

    assert fire_times(before) == ["2024-01-01T00:05:00Z", "2024-01-01T00:10:00Z"]
    assert fire_times(after) == ["2024-01-01T00:15:00Z", "2024-01-01T00:20:00Z"]


def test_crashed_leader_replaced_within_lease(
    app: App, make_scheduler: MakeScheduler, clock: FakeClock, db_path: Path
) -> None:
    @app.periodic(every=dt.timedelta(seconds=1), name="second", catch_up="all")
    def second() -> None: ...

    leader, standby = make_scheduler(lease=3.0), make_scheduler(lease=3.0)
    assert leader.tick().leader
    assert not standby.tick().leader
    crash_at = utc(2024, 1, 1, 0, 0, 5).timestamp()
    fires, took_over_at = [], None
    for _ in range(210):  # 10.5 s in steps of 50 ms; the leader stops ticking at 5 s
        clock.advance(0.05)
        if clock.now < crash_at:
            fires += leader.tick().fires
        result = standby.tick()
        fires += result.fires
        if result.leader and took_over_at is None:
            took_over_at = clock.now

    assert took_over_at is not None
    assert crash_at < took_over_at <= crash_at + 3.0 + 0.1
    expected = [utc(2024, 1, 1, 0, 0, s) for s in range(1, 11)]
    assert [fire.fire_time for fire in fires] == expected
    counts = keyed_jobs(db_path, "schedule:second:")
    assert set(counts.values()) == {1}


def test_two_leaders_enqueue_each_fire_once(
    app: App, make_scheduler: MakeScheduler, clock: FakeClock, db_path: Path
) -> None:
    @app.periodic(every=dt.timedelta(minutes=1), name="split", catch_up="all")
    def split() -> None: ...

    # Different lock names make both lead, as a stalled leader and its successor would.
    first = make_scheduler(lock_name="lock-a")
    second = make_scheduler(lock_name="lock-b")
    fires = first.tick().fires + second.tick().fires
    for _ in range(10):
        clock.advance(60)
        fires += first.tick().fires + second.tick().fires
    created = [fire for fire in fires if fire.created]
    assert len(created) == 10
    counts = keyed_jobs(db_path, "schedule:split:")
    assert len(counts) == 10
    assert set(counts.values()) == {1}


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (
            dt.datetime(2024, 11, 2, 12, tzinfo=NEW_YORK),
            dt.datetime(2024, 11, 5, 12, tzinfo=NEW_YORK),
            ["2024-11-02T21:00:00Z", "2024-11-03T22:00:00Z", "2024-11-04T22:00:00Z"],
        ),
        (
            dt.datetime(2024, 3, 9, 12, tzinfo=NEW_YORK),
            dt.datetime(2024, 3, 12, 12, tzinfo=NEW_YORK),
            ["2024-03-09T22:00:00Z", "2024-03-10T21:00:00Z", "2024-03-11T21:00:00Z"],
        ),
    ],
)
def test_daily_job_across_new_york_changes(
    app: App,
    make_scheduler: MakeScheduler,
    clock: FakeClock,
    start: dt.datetime,
    end: dt.datetime,
    expected: list[str],
) -> None:
    clock.now = start.timestamp()

    @app.periodic(cron="0 17 * * *", timezone="America/New_York", name="daily_report")
    def daily_report() -> None: ...

    fires = run_until(make_scheduler(lease=7200.0), clock, end)
    assert fire_times(fires) == expected


def test_daily_job_with_restart_on_fall_back_day(
    app: App, make_scheduler: MakeScheduler, clock: FakeClock
) -> None:
    clock.now = dt.datetime(2024, 11, 2, 12, tzinfo=NEW_YORK).timestamp()

    @app.periodic(cron="0 17 * * *", timezone="America/New_York", name="daily_report")
    def daily_report() -> None: ...

    first = make_scheduler(lease=7200.0)
    fires = run_until(first, clock, dt.datetime(2024, 11, 3, 3, tzinfo=NEW_YORK))
    first.step_down()
    second = make_scheduler(lease=7200.0)
    fires += run_until(second, clock, dt.datetime(2024, 11, 5, 12, tzinfo=NEW_YORK))
    assert fire_times(fires) == [
        "2024-11-02T21:00:00Z",
        "2024-11-03T22:00:00Z",
        "2024-11-04T22:00:00Z",
    ]


def test_year_of_daily_fires_through_scheduler(
    app: App, make_scheduler: MakeScheduler, clock: FakeClock
) -> None:
    @app.periodic(cron="30 2 * * *", timezone="Europe/Berlin", name="nightly")
    def nightly() -> None: ...

    fires = run_until(make_scheduler(lease=3 * 86400.0), clock, utc(2025, 1, 1))
    local_days = [fire.fire_time.astimezone(BERLIN).date() for fire in fires]
    assert len(fires) == 366
    assert len(set(local_days)) == 366
    times = set(fire_times(fires))
    assert "2024-03-31T01:30:00Z" in times
    assert "2024-10-27T00:30:00Z" in times
    assert "2024-10-27T01:30:00Z" not in times


def test_full_queue_defers_fire(
    app: App, make_scheduler: MakeScheduler, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    app.queue("tiny", max_length=1)

    @app.task(queue="tiny", name="blocker")
    def blocker() -> None: ...

    @app.periodic(every=dt.timedelta(minutes=1), name="squeezed", queue="tiny")
    def squeezed() -> None: ...

    held = blocker.enqueue()
    scheduler = make_scheduler()
    scheduler.tick()
    clock.now = utc(2024, 1, 1, 0, 1).timestamp()
    caplog.set_level(logging.WARNING, logger="sluicegate.scheduler")
    assert scheduler.tick().fires == []
    assert "schedule fire rejected, queue full schedule=squeezed" in caplog.text

    held.cancel()
    clock.advance(5)
    assert fire_times(scheduler.tick().fires) == ["2024-01-01T00:01:00Z"]


def test_interval_rule_fires_from_state_after_restart(
    app: App, make_scheduler: MakeScheduler, clock: FakeClock
) -> None:
    @app.periodic(every=dt.timedelta(hours=1), name="hourly", catch_up="latest")
    def hourly() -> None: ...

    run_until(make_scheduler(), clock, utc(2024, 1, 1, 2))
    clock.now = utc(2024, 1, 1, 9, 30).timestamp()
    fires = run_until(make_scheduler(holder="other"), clock, utc(2024, 1, 1, 10))
    assert fire_times(fires) == ["2024-01-01T09:00:00Z", "2024-01-01T10:00:00Z"]
    assert isinstance(app.schedules["hourly"].rule, IntervalRule)
