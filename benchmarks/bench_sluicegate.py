"""The sluicegate side of the benchmark: an App on a SQLite file and the `sluicegate worker` CLI."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import sqlite3
from pathlib import Path
from types import ModuleType

from bench_common import connect_read_only, console_script, load_module_from_file

from sluicegate.backends._wakeup import channel_dir

MODULE_NAME = "sluicegate_bench_tasks"
QUEUE = "bench"
WORKER_CONCURRENCY = 8
PREFILL_BATCH = 1000

MODULE_SOURCE = """\
import sluicegate

app = sluicegate.App({url!r})


@app.task(queue={queue!r})
def noop(i: int) -> int:
    return i
"""


class SluicegateAdapter:
    """Drives a sluicegate App in this process and `sluicegate worker` as the worker.

    Completion is counted from the activity table, which the worker updates in the same
    transaction that deletes a finished job's message: the sum of its completed column over
    the queue's rows. The table has one row per queue per 5-second bucket, so the sum reads a
    handful of rows. It also counts dead-lettered messages, so verify_drained() checks the job
    records afterwards.
    """

    name = "sluicegate"
    has_bulk_enqueue = True

    def __init__(self) -> None:
        self.version = importlib.metadata.version("sluicegate")
        self._module: ModuleType | None = None
        self._db_path: Path | None = None
        self._reader: sqlite3.Connection | None = None

    def open(self, directory: Path) -> None:
        self.close()
        self._db_path = directory / "sluicegate.db"
        source = MODULE_SOURCE.format(url=f"sqlite:///{self._db_path}", queue=QUEUE)
        module_path = directory / f"{MODULE_NAME}.py"
        module_path.write_text(source)
        self._module = load_module_from_file(MODULE_NAME, module_path)

    def close(self) -> None:
        if self._module is not None:
            self._module.app.close()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._db_path is not None:
            remove_wakeup_dirs(self._db_path)

    @property
    def module(self) -> ModuleType:
        if self._module is None:
            raise RuntimeError("SluicegateAdapter.open() must be called first")
        return self._module

    def describe_storage(self) -> str:
        # NOTE: _connection() is private; it is read here only to report the pragma that
        # this process's producer connection really runs with.
        connection = self.module.app.backend._connection()
        journal_mode = connection.execute("pragma journal_mode").fetchone()[0]
        synchronous = connection.execute("pragma synchronous").fetchone()[0]
        names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
        return (
            f"producer connection: journal_mode={journal_mode}, "
            f"synchronous={names.get(synchronous, synchronous)}, one transaction per enqueue "
            "or per enqueue_many call"
        )

    def describe_worker(self) -> str:
        return (
            f"sluicegate --log-level warning worker --queues {QUEUE} "
            f"--concurrency {WORKER_CONCURRENCY} (one process, sync tasks on a thread pool)"
        )

    def enqueue_one(self, i: int) -> None:
        self.module.noop.enqueue(i)

    def enqueue_bulk(self, numbers: list[int]) -> None:
        self.module.noop.enqueue_many([((i,), {}) for i in numbers])

    def prefill(self, count: int) -> None:
        for start in range(0, count, PREFILL_BATCH):
            self.enqueue_bulk(list(range(start, min(start + PREFILL_BATCH, count))))

    def worker_command(self) -> list[str]:
        return [
            str(console_script("sluicegate")),
            "--log-level",
            "warning",
            "worker",
            f"{MODULE_NAME}:app",
            "--queues",
            QUEUE,
            "--concurrency",
            str(WORKER_CONCURRENCY),
        ]

    def completed_count(self) -> int:
        row = self._read_one(
            "select coalesce(sum(completed), 0) from activity where queue = ?", (QUEUE,)
        )
        return int(row[0])

    def verify_drained(self, count: int) -> None:
        succeeded = int(
            self._read_one("select count(*) from jobs where state = 'succeeded'", ())[0]
        )
        if succeeded != count:
            raise RuntimeError(f"sluicegate: {succeeded} of {count} jobs succeeded")

    def round_trip(self, i: int, timeout: float) -> None:
        value = self.module.noop.enqueue(i).result(timeout=timeout)
        if value != i:
            raise RuntimeError(f"sluicegate returned {value!r} for noop({i})")

    def _read_one(self, sql: str, params: tuple[object, ...]) -> tuple[object, ...]:
        if self._db_path is None:
            raise RuntimeError("SluicegateAdapter.open() must be called first")
        if self._reader is None:
            self._reader = connect_read_only(self._db_path)
        row: tuple[object, ...] = self._reader.execute(sql, params).fetchone()
        return row


def remove_wakeup_dirs(db_path: Path) -> None:
    """Remove the wake-up socket directories of db_path if they are empty.

    sluicegate creates them in the system temporary directory, one pair per database file,
    and leaves them behind; a benchmark run would otherwise leave ten of them.
    """
    # NOTE: channel_dir comes from a private module, so this breaks if sluicegate moves it.
    base = channel_dir(str(db_path))
    for path in (base, base + "-results"):
        with contextlib.suppress(OSError):
            os.rmdir(path)
