"""Helpers for the scheduler tests: driving a scheduler tick by tick on a fake clock."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from conformance_backends import FakeClock

from sluicegate.schedule import iso_utc
from sluicegate.scheduler import Fire, Scheduler

#: Where every test's clock starts.
START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)

#: Upper bound on ticks in one ``run_until`` call, so a scheduler that never sleeps fails fast.
MAX_TICKS = 20_000


def utc(*fields: int) -> dt.datetime:
    """Return the aware UTC datetime with ``fields`` (year, month, day, hour, ...)."""
    return dt.datetime(*fields, tzinfo=dt.UTC)  # type: ignore[arg-type, misc]


def run_until(scheduler: Scheduler, clock: FakeClock, end: dt.datetime) -> list[Fire]:
    """Tick ``scheduler``, jumping ``clock`` to each wake-up time, until ``end``.

    Models a scheduler that wakes exactly when it asked to. Returns the fires
    of every tick, in order.
    """
    fires: list[Fire] = []
    stop = end.timestamp()
    for _ in range(MAX_TICKS):
        result = scheduler.tick()
        fires.extend(result.fires)
        if result.wake_at > stop:
            clock.now = max(clock.now, stop)
            return fires
        assert result.wake_at > clock.now, "the scheduler asked to wake up in the past"
        clock.now = max(clock.now, result.wake_at)
    raise AssertionError(f"scheduler ticked {MAX_TICKS} times before {end.isoformat()}")


def fire_times(fires: Iterable[Fire]) -> list[str]:
    """Return the fire times as ISO UTC strings, in the order given."""
    return [iso_utc(fire.fire_time) for fire in fires]


#: The idempotency key of every job record in a SQLite file. A job that no worker
#: reserved yet has no jobs row: its record is its task message with fence 0.
SQLITE_JOB_KEYS = (
    "SELECT idempotency_key FROM jobs UNION ALL "
    "SELECT idempotency_key FROM messages WHERE task IS NOT NULL AND fence = 0"
)


def keyed_jobs(db_path: Path, prefix: str) -> dict[str, int]:
    """Count the job records of each idempotency key that starts with ``prefix``."""
    conn = sqlite3.connect(db_path, timeout=30.0)
    try:
        rows = conn.execute(
            f"SELECT idempotency_key, count(*) FROM ({SQLITE_JOB_KEYS}) "
            "WHERE substr(idempotency_key, 1, length(?)) = ? GROUP BY idempotency_key",
            (prefix, prefix),
        ).fetchall()
    finally:
        conn.close()
    return {str(key): int(count) for key, count in rows}
