"""The ``sluicegate`` command group."""

from __future__ import annotations

import logging

import click

from sluicegate.cli import breakers, demo, jobs, migrate, queues, scheduler, serve, worker


@click.group()
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
    help="Level of the log lines written to stderr.",
)
def cli(log_level: str) -> None:
    """sluicegate: run workers, enqueue jobs and inspect queues."""
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


cli.add_command(worker.worker)
cli.add_command(jobs.enqueue)
cli.add_command(jobs.status)
cli.add_command(queues.queues)
cli.add_command(queues.dead_letters)
cli.add_command(demo.demo)
cli.add_command(migrate.migrate)
cli.add_command(serve.serve)
cli.add_command(scheduler.scheduler)
cli.add_command(scheduler.schedules)
cli.add_command(breakers.breakers)


def main() -> None:
    cli(prog_name="sluicegate")
