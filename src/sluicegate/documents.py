"""JSON documents of job records, shared by the HTTP API and webhook deliveries."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson

from sluicegate.store import JobRecord


def job_document(record: JobRecord) -> dict[str, Any]:
    """Return a job record as a JSON-ready dict; times are ISO 8601 strings in UTC.

    ``result`` is the return value in the codec's JSON form (tagged objects
    for types JSON lacks), so :func:`sluicegate.codec.from_json` restores it.
    """
    error = record.error
    return {
        "id": record.id,
        "task": record.task,
        "queue": record.queue,
        "state": record.state.value,
        "attempts": record.attempts,
        "created_at": iso(record.created_at),
        "eta": iso(record.eta),
        "started_at": iso(record.started_at),
        "finished_at": iso(record.finished_at),
        "expires_at": iso(record.expires_at),
        "result": None if record.result is None else orjson.loads(record.result),
        "error": None
        if error is None
        else {"type": error.type, "message": error.message, "traceback": error.traceback},
        "cancel_requested": record.cancel_requested,
        "progress": record.progress,
        "progress_message": record.progress_message,
        "idempotency_key": record.idempotency_key,
        "note": record.note,
        "version": record.version,
    }


def iso(timestamp: float | None) -> str | None:
    """Return a Unix time as ISO 8601 in UTC with milliseconds and a ``Z``, or None.

    The ``Z`` matches how the API's response models write their times.
    """
    if timestamp is None:
        return None
    text = dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="milliseconds")
    return text.removesuffix("+00:00") + "Z"
