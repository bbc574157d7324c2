"""``sluicegate scheduler`` and ``sluicegate schedules``."""

from __future__ import annotations

import datetime as dt
import signal
from types import FrameType

import click

from sluicegate.app import App
from sluicegate.cli._common import import_app, user_errors
from sluicegate.schedule import Schedule, iso_utc
from sluicegate.scheduler import DEFAULT_LEASE, LEADER_LOCK, Scheduler, read_state

LEASE_HELP = (
    "Seconds the leader lock lasts without renewal; another scheduler takes over "
    "about this long after the leader dies."
)


@click.command()
@click.argument("app_spec", metavar="APP_MODULE:APP")
@click.option(
    "--lease",
    default=DEFAULT_LEASE,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help=LEASE_HELP,
)
@user_errors
def scheduler(app_spec: str, lease: float) -> None:
    """Enqueue the app's periodic tasks until SIGTERM or SIGINT.

    Run as many as you like: one leads and fires, the others stand by.
    """
    app = import_app(app_spec)
    runner = Scheduler(app, lease=lease)

    def request_stop(signum: int, frame: FrameType | None) -> None:
        runner.stop()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    runner.run()


@click.command()
@click.argument("app_spec", metavar="APP_MODULE:APP")
@click.option(
    "--count",
    default=3,
    show_default=True,
    type=click.IntRange(1, 100),
    help="Next fire times shown per schedule.",
)
@user_errors
def schedules(app_spec: str, count: int) -> None:
    """Show each schedule: its next fires (local time and UTC), last fire and that job's state."""
    from rich.console import Console
    from rich.table import Table

    app = import_app(app_spec)
    now = dt.datetime.now(dt.UTC)
    table = Table(
        "schedule", "rule", "next fires (local)", "next fires (UTC)", "last fire (UTC)", "last job"
    )
    for schedule in app.schedules.values():
        fires = schedule.next_fires(now, count)
        table.add_row(
            schedule.name,
            _rule_text(schedule),
            "\n".join(_local_text(fire, schedule) for fire in fires),
            "\n".join(iso_utc(fire) for fire in fires),
            *_last_fire(app, schedule),
        )
    holder = app.backend.lock_holder(LEADER_LOCK)
    leader = "none" if holder is None else holder[0]
    table.caption = f"leader: {leader}"
    Console().print(table)


def _rule_text(schedule: Schedule) -> str:
    rule = schedule.rule.definition
    return f"{rule}\nqueue {schedule.task.options.queue}, catch_up={schedule.catch_up}"


def _local_text(fire: dt.datetime, schedule: Schedule) -> str:
    return fire.astimezone(schedule.timezone).strftime("%Y-%m-%d %H:%M:%S %Z")


def _last_fire(app: App, schedule: Schedule) -> tuple[str, str]:
    _, state = read_state(app.backend, schedule.name)
    if state is None or state.last_fire is None or state.job_id is None:
        return "-", "-"
    record = app.backend.get_job(state.job_id)
    job_state = "expired" if record is None else record.state.value
    return iso_utc(state.last_fire), f"{state.job_id}\n{job_state}"
