"""The sluicegate side of the benchmark: an App on a SQLite file and the `sluicegate worker` CLI."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import sqlite3
from pathlib import Path
from types import ModuleType

from bench_common import (
    StorageSettings,
    connect_read_only,
    console_script,
    load_module_from_file,
    read_storage_settings,
)

import sluicegate

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
    """Adapter for sluicegate: an App in this process and `sluicegate worker` as the worker.

    Completion is counted as the prefilled jobs minus the queue's length column in the
    queues table: one primary-key lookup. SQLite triggers keep that column equal to the
    queue's ready, delayed and reserved messages, and the worker deletes a job's message in
    the transaction that records the job's outcome. A dead-lettered message also leaves the
    length, so verify_drained() reads the job records afterwards and requires every job to
    have succeeded.
    """

    name = "sluicegate"
    has_bulk_enqueue = True

    def __init__(self) -> None:
        self.version = (
            f"{importlib.metadata.version('sluicegate')} (source digest {source_digest()})"
        )
        self._module: ModuleType | None = None
        self._db_path: Path | None = None
        self._reader: sqlite3.Connection | None = None
        self._prefilled_ids: list[str] = []

    def open(self, directory: Path) -> None:
        self.close()
        self._prefilled_ids = []
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

    def storage_settings(self) -> StorageSettings:
        transactions = "producer connection, one transaction per enqueue or enqueue_many call"
        # NOTE: _connection() is private. It is read only to report the pragmas that this
        # process's producer connection really runs with, and reported as unknown if gone.
        connect = getattr(self.module.app.backend, "_connection", None)
        if connect is None:
            return StorageSettings("unknown", "unknown", transactions)
        return read_storage_settings(connect(), transactions)

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
            calls = [((i,), {}) for i in range(start, min(start + PREFILL_BATCH, count))]
            jobs = self.module.noop.enqueue_many(calls)
            self._prefilled_ids.extend(job.id for job in jobs)

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
        row = self._read_one("select length from queues where name = ?", (QUEUE,))
        length = 0 if row is None else int(row[0])
        return len(self._prefilled_ids) - length

    def verify_drained(self, count: int) -> None:
        records = self.module.app.backend.get_jobs(self._prefilled_ids)
        succeeded = sum(1 for record in records if record.state == sluicegate.JobState.SUCCEEDED)
        if len(self._prefilled_ids) != count or succeeded != count:
            raise RuntimeError(
                f"sluicegate: {succeeded} of {len(self._prefilled_ids)} prefilled jobs "
                f"succeeded, {count} expected"
            )

    def round_trip(self, i: int, timeout: float) -> None:
        value = self.module.noop.enqueue(i).result(timeout=timeout)
        if value != i:
            raise RuntimeError(f"sluicegate returned {value!r} for noop({i})")

    def _read_one(self, sql: str, params: tuple[object, ...]) -> tuple[object, ...] | None:
        if self._db_path is None:
            raise RuntimeError("SluicegateAdapter.open() must be called first")
        if self._reader is None:
            self._reader = connect_read_only(self._db_path)
        row: tuple[object, ...] | None = self._reader.execute(sql, params).fetchone()
        return row


def remove_wakeup_dirs(db_path: Path) -> None:
    """Remove the wake-up socket directories of db_path if they are empty.

    sluicegate creates a pair of them in the system temporary directory for each database
    file and leaves them there. One benchmark run opens more than ten database files.
    """
    try:
        # NOTE: channel_dir is in a private module. If sluicegate moves it, the directories
        # stay behind.
        from sluicegate.backends._wakeup import channel_dir
    except ImportError:
        return
    base = channel_dir(str(db_path))
    for path in (base, base + "-results"):
        with contextlib.suppress(OSError):
            os.rmdir(path)


def source_digest() -> str:
    """Return a short SHA-256 over the package's .py files, to tie figures to a source state."""
    package_dir = Path(sluicegate.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        digest.update(path.relative_to(package_dir).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]
