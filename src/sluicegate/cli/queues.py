"""``sluicegate queues`` and ``sluicegate dead-letters``.

rich is imported inside the commands that print tables, so that a worker
process, which loads this module through the CLI, never loads it.
"""

from __future__ import annotations

import datetime as dt

import click

from sluicegate.cli._common import import_app, user_errors


@click.command()
@click.argument("app_spec", metavar="APP_MODULE:APP")
@user_errors
def queues(app_spec: str) -> None:
    """Show each queue: ready, delayed, running, dead, oldest ready age, bound."""
    from rich.console import Console
    from rich.table import Table

    app = import_app(app_spec)
    table = Table("queue", "ready", "delayed", "running", "dead", "oldest ready", "bound")
    for stats in app.backend.stats():
        age = "-" if stats.oldest_ready_age is None else f"{stats.oldest_ready_age:.1f}s"
        table.add_row(
            stats.name,
            str(stats.ready),
            str(stats.delayed),
            str(stats.running),
            str(stats.dead),
            age,
            str(stats.max_length),
        )
    Console().print(table)


@click.group("dead-letters")
def dead_letters() -> None:
    """List, retry or purge a queue's dead letters."""


@dead_letters.command("list")
@click.argument("app_spec", metavar="APP_MODULE:APP")
@click.option("--queue", "-q", default="default", show_default=True, help="Queue to list.")
@click.option(
    "--limit", default=100, show_default=True, type=click.IntRange(1), help="Most rows shown."
)
@user_errors
def list_dead(app_spec: str, queue: str, limit: int) -> None:
    """List dead letters, oldest first, with the reason of each."""
    from rich.console import Console
    from rich.table import Table

    app = import_app(app_spec)
    table = Table("message id", "dead since (UTC)", "deliveries", "reason")
    for letter in app.queue(queue).dead_letters(limit):
        since = dt.datetime.fromtimestamp(letter.dead_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(letter.message_id, since, str(letter.delivery_count), letter.reason)
    Console().print(table)


@dead_letters.command("retry")
@click.argument("app_spec", metavar="APP_MODULE:APP")
@click.argument("message_ids", nargs=-1)
@click.option(
    "--queue", "-q", default="default", show_default=True, help="Queue of the dead letters."
)
@click.option("--all", "retry_all", is_flag=True, help="Retry every dead letter of the queue.")
@user_errors
def retry_dead(app_spec: str, message_ids: tuple[str, ...], queue: str, retry_all: bool) -> None:
    """Put dead letters back on their queue: the given MESSAGE_IDS, or --all."""
    if not message_ids and not retry_all:
        raise click.UsageError("name message ids to retry, or pass --all")
    app = import_app(app_spec)
    count = app.queue(queue).retry_dead(None if retry_all else list(message_ids))
    click.echo(f"{count} dead letters put back on queue {queue}")


@dead_letters.command("purge")
@click.argument("app_spec", metavar="APP_MODULE:APP")
@click.argument("message_ids", nargs=-1)
@click.option(
    "--queue", "-q", default="default", show_default=True, help="Queue of the dead letters."
)
@click.option("--all", "purge_all", is_flag=True, help="Delete every dead letter of the queue.")
@user_errors
def purge_dead(app_spec: str, message_ids: tuple[str, ...], queue: str, purge_all: bool) -> None:
    """Delete dead letters: the given MESSAGE_IDS, or --all."""
    if not message_ids and not purge_all:
        raise click.UsageError("name message ids to purge, or pass --all")
    app = import_app(app_spec)
    count = app.queue(queue).purge_dead(None if purge_all else list(message_ids))
    click.echo(f"{count} dead letters deleted from queue {queue}")
