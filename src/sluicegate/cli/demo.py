"""``sluicegate demo``: index the Python standard library with a real worker."""

from __future__ import annotations

import click


@click.command()
@click.option(
    "--db",
    default=None,
    help="Database file to create (it must not exist); default: one in a new temporary directory.",
)
@click.option(
    "--concurrency",
    default=8,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Worker concurrency.",
)
@click.option(
    "--timeout",
    default=120.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds the whole run may take before the demo stops and exits 1.",
)
def demo(db: str | None, concurrency: int, timeout: float) -> None:
    """Index every .py file of the standard library, one job per file."""
    from sluicegate.demo.stdlib_index import run_demo

    raise SystemExit(run_demo(db, concurrency, timeout))
