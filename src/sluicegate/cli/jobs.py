"""``sluicegate enqueue`` and ``sluicegate status``."""

from __future__ import annotations

import json
from typing import Any

import click
import orjson

from sluicegate import codec
from sluicegate.cli._common import import_app, user_errors
from sluicegate.documents import job_document
from sluicegate.errors import DecodeError


def _parse_json(value: str, option: str, kind: type) -> Any:
    # The standard json module keeps integers of any size exact, where orjson
    # would turn one beyond 64 bits into a float.
    try:
        parsed = json.loads(value)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise click.BadParameter(f"invalid JSON: {exc}", param_hint=option) from None
    if not isinstance(parsed, kind):
        raise click.BadParameter(
            f"must be a JSON {'array' if kind is list else 'object'}", param_hint=option
        )
    try:
        return codec.from_json(parsed)
    except DecodeError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


@click.command()
@click.argument("app_spec", metavar="APP_MODULE:APP")
@click.argument("task")
@click.option(
    "--args",
    "args_json",
    default="[]",
    show_default=True,
    help="Positional arguments as a JSON array.",
)
@click.option(
    "--kwargs",
    "kwargs_json",
    default="{}",
    show_default=True,
    help="Keyword arguments as a JSON object.",
)
@click.option(
    "--delay", type=click.FloatRange(0), default=None, help="Seconds before the job may run."
)
@click.option("--priority", type=int, default=None, help="Priority; higher runs first.")
@click.option(
    "--idempotency-key", default=None, help="Return the existing job if this key was used."
)
@user_errors
def enqueue(
    app_spec: str,
    task: str,
    args_json: str,
    kwargs_json: str,
    delay: float | None,
    priority: int | None,
    idempotency_key: str | None,
) -> None:
    """Enqueue a call of TASK and print the job id."""
    app = import_app(app_spec)
    args = _parse_json(args_json, "--args", list)
    kwargs = _parse_json(kwargs_json, "--kwargs", dict)
    job = app.get_task(task).enqueue(
        *args, delay=delay, priority=priority, idempotency_key=idempotency_key, **kwargs
    )
    click.echo(job.id)


@click.command()
@click.argument("app_spec", metavar="APP_MODULE:APP")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@user_errors
def status(app_spec: str, job_id: str, as_json: bool) -> None:
    """Print the state of job JOB_ID (exit status 1 if it is not found)."""
    app = import_app(app_spec)
    record = app.job(job_id).record
    document = job_document(record)
    if as_json:
        click.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
        return
    for key, value in document.items():
        if key == "error" and value is not None:
            value = f"{value['type']}: {value['message']}"
        if value is not None and value is not False:
            click.echo(f"{key:>16}: {value}")
