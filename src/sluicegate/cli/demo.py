"""``sluicegate demo``: the bundled demos, each with a real worker.

``sluicegate demo`` without a subcommand runs ``sluicegate demo stdlib``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from sluicegate.cli.fanout import fanout

F = Callable[..., Any]


def _stdlib_options(function: F) -> F:
    """Add the options of the stdlib demo, which both ``demo`` and ``demo stdlib`` take."""
    function = click.option(
        "--timeout",
        default=120.0,
        show_default=True,
        type=click.FloatRange(min=0, min_open=True),
        help="Seconds the whole run may take before the demo stops and exits 1.",
    )(function)
    function = click.option(
        "--concurrency",
        default=8,
        show_default=True,
        type=click.IntRange(1, 256),
        help="Worker concurrency.",
    )(function)
    return click.option(
        "--db",
        default=None,
        help=(
            "Database file to create (it must not exist); "
            "default: one in a new temporary directory."
        ),
    )(function)


@click.group(invoke_without_command=True)
@_stdlib_options
@click.pass_context
def demo(ctx: click.Context, db: str | None, concurrency: int, timeout: float) -> None:
    """Run a bundled demo; without a subcommand, the stdlib demo."""
    if ctx.invoked_subcommand is None:
        _run_stdlib(db, concurrency, timeout)


@demo.command()
@_stdlib_options
def stdlib(db: str | None, concurrency: int, timeout: float) -> None:
    """Index every .py file of the standard library, one job per file."""
    _run_stdlib(db, concurrency, timeout)


def _run_stdlib(db: str | None, concurrency: int, timeout: float) -> None:
    from sluicegate.demo.stdlib_index import run_demo

    raise SystemExit(run_demo(db, concurrency, timeout))


demo.add_command(fanout)
