"""``sluicegate demo fanout``: deliver posts to followers' timelines under rising load."""

from __future__ import annotations

from pathlib import Path

import click


def _parse_steps(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> list[tuple[float, float]] | None:
    """Parse ``RATE:SECONDS,...`` into pairs; ``None`` keeps the default steps."""
    if value is None:
        return None
    steps: list[tuple[float, float]] = []
    for item in value.split(","):
        rate, _, seconds = item.partition(":")
        try:
            step = (float(rate), float(seconds))
        except ValueError:
            raise click.BadParameter(f"{item!r} is not RATE:SECONDS, e.g. 20:3") from None
        if step[0] <= 0 or step[1] <= 0:
            raise click.BadParameter(f"{item!r}: rate and seconds must be positive")
        steps.append(step)
    return steps


@click.command()
@click.option("--users", default=10_000, show_default=True, type=click.IntRange(2, 1_000_000))
@click.option(
    "--seed", default=7, show_default=True, type=int, help="Seed of the graph and the authors."
)
@click.option(
    "--batch-size",
    default=200,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Followers per delivery job.",
)
@click.option(
    "--max-length",
    default=500,
    show_default=True,
    type=click.IntRange(1),
    help="Bound of the fan-out queue, in jobs.",
)
@click.option(
    "--steps",
    default=None,
    callback=_parse_steps,
    help="Rising load as RATE:SECONDS pairs in posts per second; default: 10:3,30:3,60:3,100:3.",
)
@click.option(
    "--concurrency", default=4, show_default=True, type=click.IntRange(1, 256), help="Worker jobs."
)
@click.option(
    "--timeout",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds the whole run may take before it stops and exits 1.",
)
@click.option(
    "--dir",
    "directory",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the databases and logs; default: a new temporary directory.",
)
def fanout(
    users: int,
    seed: int,
    batch_size: int,
    max_length: int,
    steps: list[tuple[float, float]] | None,
    concurrency: int,
    timeout: float,
    directory: Path | None,
) -> None:
    """Deliver posts to followers' timelines under rising load, then check exactly-once."""
    from sluicegate.demo.fanout.load import RateStep
    from sluicegate.demo.fanout.runner import DEFAULT_STEPS, FanoutOptions, run_fanout

    options = FanoutOptions(
        users=users,
        seed=seed,
        batch_size=batch_size,
        max_length=max_length,
        steps=DEFAULT_STEPS if steps is None else [RateStep(*step) for step in steps],
        concurrency=concurrency,
        timeout=timeout,
        directory=directory,
    )
    raise SystemExit(run_fanout(options))
