"""Server-Sent Events of one job: its record each time it changes, until final.

Each event carries the whole job record (the same JSON as ``GET
/v1/jobs/{id}``) and an integer id derived from the record's ``version``,
which the store raises at every write. Ids grow strictly within a job, so a
client that reconnects with ``Last-Event-ID: N`` gets only records newer
than N: nothing is sent twice. The stream is a series of snapshots, not a
log of transitions. When the record changes twice between two reads, the
stream shows only the later record, but it always ends with the final one.

The server reads the record every 50 ms after a change, slowing to every
500 ms while nothing changes, so an event reaches the client at most about
half a second after the write.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson

from sluicegate.http.schemas import job_body
from sluicegate.store import JobRecord, JobState

#: Pause, in seconds, before the first read after a change.
MIN_POLL_INTERVAL = 0.05

#: Maximum pause, in seconds, between two reads of an unchanged record.
MAX_POLL_INTERVAL = 0.5

#: Seconds without an event after which a comment line keeps proxies from closing the stream.
KEEPALIVE_INTERVAL = 15.0

#: Milliseconds a browser's EventSource waits before it reconnects, sent as ``retry``.
RECONNECT_DELAY_MS = 1000


def event_id(record: JobRecord) -> int:
    """Return the event id of a record: strictly growing as the job moves on.

    A scheduled job turns queued when its eta passes without any write, so
    the id adds one for every state but ``scheduled`` to tell the two apart.
    """
    return record.version * 2 + (record.state is not JobState.SCHEDULED)


def parse_last_event_id(value: str | None) -> int | None:
    """Return the integer in a ``Last-Event-ID`` header; anything else counts as absent."""
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


def is_caught_up(record: JobRecord, last_event_id: int | None) -> bool:
    """Return whether a client that saw ``last_event_id`` has the final event already."""
    return record.state.is_final and last_event_id is not None and last_event_id >= event_id(record)


async def job_events(
    first: JobRecord,
    read: Callable[[], Awaitable[JobRecord | None]],
    last_event_id: int | None,
) -> AsyncIterator[bytes]:
    """Yield SSE frames for a job, starting from ``first``, until it is final.

    ``read`` returns the current record, or None once it expired, which ends
    the stream with an ``expired`` event.
    """
    yield f"retry: {RECONNECT_DELAY_MS}\n\n".encode()
    last = -1 if last_event_id is None else last_event_id
    previous_state: JobState | None = None
    record: JobRecord | None = first
    interval = MIN_POLL_INTERVAL
    sent_at = time.monotonic()
    while record is not None:
        current = event_id(record)
        if current > last:
            kind = "progress" if record.state is previous_state else "state"
            yield _frame(current, kind, record)
            last, previous_state, interval = current, record.state, MIN_POLL_INTERVAL
            sent_at = time.monotonic()
        if record.state.is_final:
            return
        if time.monotonic() - sent_at > KEEPALIVE_INTERVAL:
            yield b": keep-alive\n\n"
            sent_at = time.monotonic()
        await asyncio.sleep(interval)
        interval = min(interval * 2, MAX_POLL_INTERVAL)
        record = await read()
    yield b'event: expired\ndata: {"detail": "the job\'s record expired"}\n\n'


def _frame(identifier: int, kind: str, record: JobRecord) -> bytes:
    data = orjson.dumps(job_body(record)).decode()
    return f"id: {identifier}\nevent: {kind}\ndata: {data}\n\n".encode()
