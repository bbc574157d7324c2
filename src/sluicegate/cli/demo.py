"""``sluicegate demo``: index the Python standard library with a real worker."""

from __future__ import annotations

import click


@click.command()
@click.option("--db", default=None, help="Database file; default: a fresh temporary one.")
@click.option(
    "--concurrency",
    default=8,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Worker concurrency.",
)
def demo(db: str | None, concurrency: int) -> None:
    """Index every .py file of the standard library, one job per file."""
    from sluicegate.demo.stdlib_index import run_demo

    raise SystemExit(run_demo(db, concurrency))
