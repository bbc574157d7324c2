"""``sluicegate breakers``: show circuit breakers, reset them or force them open.

rich is imported inside the command that prints the table, so that a worker
process, which loads this module through the CLI, never loads it.
"""

from __future__ import annotations

import datetime as dt

import click

from sluicegate.breaker import breaker_of, known_breakers
from sluicegate.cli._common import import_app, user_errors


class _ListByDefault(click.Group):
    """A group that runs ``list`` when its first argument names no subcommand."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["list", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_ListByDefault)
def breakers() -> None:
    """Show circuit breakers (``breakers APP``), reset them or force them open."""


@breakers.command("list")
@click.argument("app_spec", metavar="APP_MODULE:APP")
@user_errors
def list_breakers(app_spec: str) -> None:
    """Show each breaker: state, failure rate, calls in window, opened at, next probe."""
    from rich.console import Console
    from rich.table import Table

    app = import_app(app_spec)
    table = Table(
        "breaker", "state", "failure rate", "calls", "opened at (UTC)", "next probe (UTC)"
    )
    for breaker in known_breakers(app):
        snapshot = breaker.state()
        table.add_row(
            snapshot.name,
            snapshot.state.value,
            f"{snapshot.failure_rate:.1%}",
            str(snapshot.calls),
            _format_time(snapshot.opened_at),
            _format_time(snapshot.next_probe_at),
        )
    Console().print(table)


@breakers.command("reset")
@click.argument("app_spec", metavar="APP_MODULE:APP")
@click.argument("name")
@user_errors
def reset(app_spec: str, name: str) -> None:
    """Close breaker NAME and forget its counts."""
    app = import_app(app_spec)
    breaker_of(app, name).reset()
    click.echo(f"breaker {name} closed")


@breakers.command("force-open")
@click.argument("app_spec", metavar="APP_MODULE:APP")
@click.argument("name")
@click.option(
    "--for",
    "duration",
    type=click.FloatRange(min=0, max=365 * 24 * 3600.0, min_open=True),
    default=None,
    help="Seconds to stay open before admitting probes [default: the reset timeout].",
)
@user_errors
def force_open(app_spec: str, name: str, duration: float | None) -> None:
    """Open breaker NAME now, in every process."""
    app = import_app(app_spec)
    breaker = breaker_of(app, name)
    breaker.force_open(duration)
    click.echo(f"breaker {name} open until {_format_time(breaker.state().next_probe_at)} UTC")


def _format_time(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
