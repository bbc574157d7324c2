"""``sluicegate breakers``: show circuit breakers, reset them or force them open.

rich is imported inside the command that prints the table, so that a worker
process, which loads this module through the CLI, never loads it.
"""

from __future__ import annotations

import datetime as dt

import click

from sluicegate.app import App
from sluicegate.breaker import Breaker, breaker_of, is_known_breaker, known_breakers
from sluicegate.cli._common import import_app, user_errors
from sluicegate.errors import StoreUnavailable
from sluicegate.ratelimit import RateLimiter
from sluicegate.retry_budget import KEY_PREFIX as BUDGET_PREFIX
from sluicegate.retry_budget import RetryBudget
from sluicegate.worker.guards import rate_limiter_of


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
        try:
            snapshot = breaker.state()
        except StoreUnavailable as exc:
            table.add_row(breaker.name, "unreadable", str(exc), "", "", "")
            continue
        table.add_row(
            snapshot.name,
            snapshot.state.value,
            f"{snapshot.failure_rate:.1%}",
            str(snapshot.calls),
            _format_time(snapshot.opened_at),
            _format_time(snapshot.next_probe_at),
        )
    console = Console()
    console.print(table)
    limits = Table("rate limit", "rate", "burst", "tokens now")
    for limiter in known_rate_limits(app):
        bucket = limiter.state()
        limits.add_row(bucket.name, str(bucket.rate), str(bucket.burst), f"{bucket.tokens:.1f}")
    if limits.row_count:
        console.print(limits)
    budgets = Table("retry budget", "ratio", "window", "first attempts", "retries", "allowance")
    for budget in known_retry_budgets(app):
        counts = budget.state()
        budgets.add_row(
            counts.queue,
            f"{counts.ratio:.0%}",
            f"{counts.window:g}s",
            str(counts.first_attempts),
            str(counts.retries),
            f"{counts.allowance}{' (spent)' if counts.exhausted else ''}",
        )
    if budgets.row_count:
        console.print(budgets)


@breakers.command("reset")
@click.argument("app_spec", metavar="APP_MODULE:APP")
@click.argument("name")
@user_errors
def reset(app_spec: str, name: str) -> None:
    """Close breaker NAME and forget its counts."""
    app = import_app(app_spec)
    _known(app, name).reset()
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
    breaker = _known(app, name)
    breaker.force_open(duration)
    click.echo(f"breaker {name} open until {_format_time(breaker.state().next_probe_at)} UTC")


def _known(app: App, name: str) -> Breaker:
    """Return breaker ``name`` if the app declares it, a task names it or it is stored."""
    if not is_known_breaker(app, name):
        names = ", ".join(breaker.name for breaker in known_breakers(app)) or "none"
        raise click.ClickException(
            f"breaker {name!r} not found: the app neither declares nor uses it and the store "
            f"has no state for it (known breakers: {names})"
        )
    return breaker_of(app, name)


def known_rate_limits(app: App) -> list[RateLimiter]:
    """Return the rate limits of the app's tasks, ordered by task name."""
    # NOTE: a bucket in the store that no task of this app declares is not listed,
    # since only the processes that declare it know its rate.
    tasks = sorted(app.tasks.values(), key=lambda task: task.name)
    return [limiter for task in tasks if (limiter := rate_limiter_of(task)) is not None]


def known_retry_budgets(app: App) -> list[RetryBudget]:
    """Return the retry budgets with counts in the store, and those of the app's queues."""
    stored = {key.removeprefix(BUDGET_PREFIX) for key in app.backend.keys(BUDGET_PREFIX)}
    queues = sorted(stored | {task.options.queue for task in app.tasks.values()})
    return [budget for queue in queues if (budget := app.retry_budget(queue)) is not None]


def _format_time(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
