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
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object per dead letter instead."
)
@user_errors
def list_dead(app_spec: str, queue: str, limit: int, as_json: bool) -> None:
    """List dead letters, oldest first, with the reason of each."""
    app = import_app(app_spec)
    letters = app.queue(queue).dead_letters(limit)
    if as_json:
        import orjson

        for letter in letters:
            since = dt.datetime.fromtimestamp(letter.dead_at, dt.UTC).isoformat()
            row = {
                "message_id": letter.message_id,
                "dead_at": since,
                "deliveries": letter.delivery_count,
                "reason": letter.reason,
            }
            click.echo(orjson.dumps(row).decode())
        return

    from rich.console import Console
    from rich.table import Table

    table = Table()
    # An id is folded rather than cut at a narrow terminal, so that it can be copied whole.
    table.add_column("message id", overflow="fold", min_width=36)
    table.add_column("dead since (UTC)")
    table.add_column("deliveries")
    table.add_column("reason")
    for letter in letters:
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
    _check_selection(message_ids, retry_all, "retry")
    app = import_app(app_spec)
    count = app.queue(queue).retry_dead(None if retry_all else list(message_ids))
    click.echo(f"{count} dead letters put back on queue {queue}")
    _check_found(message_ids, count, queue, "put back")


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
    _check_selection(message_ids, purge_all, "purge")
    app = import_app(app_spec)
    count = app.queue(queue).purge_dead(None if purge_all else list(message_ids))
    click.echo(f"{count} dead letters deleted from queue {queue}")
    _check_found(message_ids, count, queue, "deleted")


def _check_selection(message_ids: tuple[str, ...], every: bool, verb: str) -> None:
    if not message_ids and not every:
        raise click.UsageError(f"name message ids to {verb}, or pass --all")
    if message_ids and every:
        raise click.UsageError(f"name message ids to {verb} or pass --all, not both")


def _check_found(message_ids: tuple[str, ...], count: int, queue: str, done: str) -> None:
    """Exit 1 when some of ``message_ids`` were not acted on."""
    missing = len(set(message_ids)) - count
    if message_ids and missing > 0:
        raise click.ClickException(
            f"{missing} of the {len(set(message_ids))} message ids were not {done}: they are "
            f"not dead letters of queue {queue}, or (a corrupt message) cannot be queued "
            f"again; check them with 'sluicegate dead-letters list --queue {queue}'"
        )
