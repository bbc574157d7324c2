"""Declaring schedules with ``@app.periodic``, and the eta rules that fires share with delays."""

from __future__ import annotations

import datetime as dt
import re
import sys
import textwrap
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from conformance_backends import FakeClock

from sluicegate import App, ConfigurationError, InvalidArguments
from sluicegate.backends.sqlite import SQLiteBackend
from sluicegate.cli.main import cli
from sluicegate.schedule import CronRule
from sluicegate.scheduler import Scheduler
from sluicegate.task import ready_time

from .support import run_until, utc

BERLIN = ZoneInfo("Europe/Berlin")


def test_periodic_function_becomes_task(app: App) -> None:
    @app.periodic(cron="0 3 * * *", timezone="Europe/Berlin", queue="nightly", retries=1)
    def cleanup(days: int = 30) -> int:
        return days

    assert app.tasks[cleanup.name] is cleanup
    assert cleanup.options.queue == "nightly"
    assert cleanup.options.retries == 1
    schedule = app.schedules[cleanup.name]
    assert schedule.task is cleanup
    assert schedule.catch_up == "skip"
    assert schedule.max_catch_up == 100
    assert cleanup(days=2) == 2


def test_periodic_on_existing_task(app: App) -> None:
    @app.task(queue="mail")
    def send(kind: str) -> str:
        return kind

    app.periodic(every=dt.timedelta(hours=1), name="hourly-digest", args=("digest",))(send)
    app.periodic(cron="0 8 * * 1", name="weekly-report", kwargs={"kind": "report"})(send)
    assert set(app.schedules) == {"hourly-digest", "weekly-report"}
    assert list(app.tasks) == [send.name]


def test_periodic_checks_arguments(app: App) -> None:
    def needs_two(a: int, b: int) -> int:
        return a + b

    with pytest.raises(InvalidArguments):
        app.periodic(every=dt.timedelta(minutes=1), args=(1,))(needs_two)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cron": "0 3 * *"}, "invalid cron expression '0 3 * *'"),
        ({"cron": "0 3 * * *", "timezone": "Europe/Berlni"}, "unknown time zone 'Europe/Berlni'"),
        ({"every": dt.timedelta(minutes=1), "catch_up": "some"}, "catch_up must be"),
        ({"every": dt.timedelta(minutes=1), "max_catch_up": 0}, "max_catch_up must be"),
        ({"every": dt.timedelta(minutes=1), "start": dt.datetime(2024, 1, 1)}, "no time zone"),
    ],
)
def test_periodic_rejects(app: App, options: dict[str, Any], message: str) -> None:
    def job() -> None: ...

    with pytest.raises(ConfigurationError, match=re.escape(message)):
        app.periodic(**options)(job)


def test_duplicate_schedule_name_rejected(app: App) -> None:
    @app.task
    def job() -> None: ...

    app.periodic(every=dt.timedelta(minutes=1), name="once")(job)
    with pytest.raises(ConfigurationError, match="schedule named 'once'"):
        app.periodic(every=dt.timedelta(minutes=2), name="once")(job)


def test_task_options_on_existing_task_rejected(app: App) -> None:
    @app.task(queue="mail")
    def job() -> None: ...

    with pytest.raises(ConfigurationError, match="is a task already"):
        app.periodic(every=dt.timedelta(minutes=1), name="x", queue="other")(job)


@pytest.mark.parametrize(
    ("wall_clock", "fold"),
    [(dt.datetime(2024, 3, 31, 2, 30), 0), (dt.datetime(2024, 10, 27, 2, 30), 0)],
)
def test_fire_time_matches_eta_of_same_wall_clock(wall_clock: dt.datetime, fold: int) -> None:
    eta = wall_clock.replace(tzinfo=BERLIN, fold=fold)
    fire = CronRule("30 2 * * *", BERLIN).next_fire(eta - dt.timedelta(hours=12))
    # "now" a day before the fire, so ready_time neither clamps the eta nor
    # rejects it as too far away.
    now = eta.timestamp() - 86400
    assert fire.timestamp() == ready_time(now, None, eta)


def test_eta_in_other_zone_and_in_past() -> None:
    now = utc(2024, 6, 1, 12).timestamp()
    ahead = dt.datetime(2024, 6, 1, 14, 30, tzinfo=BERLIN)
    assert ready_time(now, None, ahead) == now + 1800
    assert ready_time(now, None, utc(2024, 6, 1, 11)) == now


def test_eta_naive_rejected() -> None:
    with pytest.raises(ConfigurationError, match="has no time zone"):
        ready_time(0.0, None, dt.datetime(2024, 6, 1, 12))


def test_fired_job_waits_for_its_fire_time(
    app: App, store: SQLiteBackend, clock: FakeClock
) -> None:
    @app.periodic(every=dt.timedelta(minutes=1), name="minutely")
    def minutely() -> None: ...

    fires = run_until(Scheduler(app, backend=store, clock=clock), clock, utc(2024, 1, 1, 0, 1))
    record = app.job(fires[0].job_id).record
    assert record.eta >= fires[0].fire_time.timestamp()


SCHEDULES_APP = """
import datetime as dt

import sluicegate

app = sluicegate.App("sqlite:///{db}")


@app.periodic(cron="30 2 * * *", timezone="Europe/Berlin", name="nightly")
def nightly():
    return None


@app.periodic(every=dt.timedelta(minutes=5), name="five")
def five():
    return None
"""


def test_schedules_command_lists_fires(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = "schedules_app"
    source = SCHEDULES_APP.format(db=tmp_path / "schedules.db")
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        import schedules_app  # type: ignore[import-not-found]

        clock = FakeClock(utc(2024, 1, 1).timestamp())
        store = SQLiteBackend(str(tmp_path / "schedules.db"), clock=clock)
        scheduler = Scheduler(schedules_app.app, backend=store, clock=clock)
        fires = run_until(scheduler, clock, utc(2024, 1, 1, 0, 5))
        store.close()
        arguments = ["schedules", f"{name}:app", "--count", "2"]
        result = CliRunner().invoke(cli, arguments, env={"COLUMNS": "250"})
    finally:
        schedules_app.app.close()
        sys.modules.pop(name, None)

    assert result.exit_code == 0, result.output
    assert "nightly" in result.output
    assert "CET" in result.output
    assert "2024-01-01T00:05:00Z" in result.output
    assert fires[0].job_id in result.output
    assert "queued" in result.output
