"""``sluicegate enqueue`` and ``sluicegate status``."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import click
import orjson

from sluicegate import codec
from sluicegate.cli._common import import_app, user_errors
from sluicegate.errors import DecodeError
from sluicegate.store import JobRecord


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
    document = describe(record)
    if as_json:
        click.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
        return
    for key, value in document.items():
        if value is not None:
            click.echo(f"{key:>16}: {value}")


def describe(record: JobRecord) -> dict[str, Any]:
    """Return a job record as a JSON-ready dict with ISO 8601 UTC times."""
    result = None if record.result is None else orjson.loads(record.result)
    return {
        "id": record.id,
        "task": record.task,
        "queue": record.queue,
        "state": record.state.value,
        "attempts": record.attempts,
        "created_at": _iso(record.created_at),
        "eta": _iso(record.eta),
        "started_at": _iso(record.started_at),
        "finished_at": _iso(record.finished_at),
        "expires_at": _iso(record.expires_at),
        "result": result,
        "error": None if record.error is None else f"{record.error.type}: {record.error.message}",
        "cancel_requested": record.cancel_requested or None,
        "progress": record.progress,
        "progress_message": record.progress_message,
        "note": record.note,
    }


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="milliseconds")
