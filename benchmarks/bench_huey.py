"""The huey side of the benchmark: SqliteHuey with its default settings and huey_consumer."""

from __future__ import annotations

import importlib.metadata
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

MODULE_NAME = "huey_bench_tasks"
HUEY_NAME = "bench"

# Only filename and name are set, so every other SqliteHuey argument keeps its default.
MODULE_SOURCE = """\
from huey import SqliteHuey

huey = SqliteHuey(name={name!r}, filename={db_path!r})


@huey.task()
def noop(i):
    return i
"""

# huey.storage imports the redis and psycopg drivers when they are installed, even for
# SqliteHuey, and `make bench` installs both for sluicegate's own backends. Python imports
# sitecustomize from PYTHONPATH at start-up, so this file makes the worker import what an
# install of huey alone would.
BLOCK_DRIVERS_SOURCE = """import sys

# A None entry in sys.modules makes `import redis` raise ImportError, which huey catches.
sys.modules.update(redis=None, psycopg=None)
"""


class HueyAdapter:
    """Adapter for huey: SqliteHuey in this process and huey_consumer as the worker.

    Completion is counted as the rows in huey's result table (kv) for this huey name. A task
    that returns a value other than None stores one row there when it finishes, and nothing
    reads results during the drain, so the count only grows.
    """

    name = "huey"
    has_bulk_enqueue = False

    def __init__(self, block_drivers: bool = True) -> None:
        self.version = importlib.metadata.version("huey")
        self.block_drivers = block_drivers
        self._module: ModuleType | None = None
        self._db_path: Path | None = None
        self._reader: sqlite3.Connection | None = None

    def open(self, directory: Path) -> None:
        self.close()
        self._db_path = directory / "huey.db"
        source = MODULE_SOURCE.format(name=HUEY_NAME, db_path=str(self._db_path))
        module_path = directory / f"{MODULE_NAME}.py"
        module_path.write_text(source)
        if self.block_drivers:
            (directory / "sitecustomize.py").write_text(BLOCK_DRIVERS_SOURCE)
        self._module = load_module_from_file(MODULE_NAME, module_path)

    def close(self) -> None:
        if self._module is not None:
            self._module.huey.storage.close()
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    @property
    def module(self) -> ModuleType:
        if self._module is None:
            raise RuntimeError("HueyAdapter.open() must be called first")
        return self._module

    def storage_settings(self) -> StorageSettings:
        return read_storage_settings(
            self.module.huey.storage.conn, "SqliteHuey defaults, one transaction per enqueue"
        )

    def describe_worker(self) -> str:
        drivers = (
            "redis and psycopg imports blocked in the worker"
            if self.block_drivers
            else "redis and psycopg imported if installed"
        )
        return (
            "huey_consumer defaults (workers=1, worker_type=thread, polling delay 0.1 s "
            "growing by 1.15x to 10 s while the queue is empty) plus --quiet for WARNING logs; "
            f"{drivers}"
        )

    def enqueue_one(self, i: int) -> None:
        self.module.noop(i)

    def enqueue_bulk(self, numbers: list[int]) -> None:
        raise NotImplementedError("huey has no bulk enqueue API (checked in huey 3.5.4)")

    def prefill(self, count: int) -> None:
        # Prefilling is not timed, so fsync is switched off on this connection to save time.
        # The worker opens its own connection with the default settings.
        connection = self.module.huey.storage.conn
        synchronous = connection.execute("pragma synchronous").fetchone()[0]
        connection.execute("pragma synchronous=OFF")
        try:
            for i in range(count):
                self.module.noop(i)
        finally:
            connection.execute(f"pragma synchronous={int(synchronous)}")
        connection.execute("pragma wal_checkpoint(TRUNCATE)")

    def worker_command(self) -> list[str]:
        return [str(console_script("huey_consumer")), f"{MODULE_NAME}.huey", "--quiet"]

    def completed_count(self) -> int:
        return self._count_rows("kv")

    def verify_drained(self, count: int) -> None:
        results = self._count_rows("kv")
        queued = self._count_rows("task")
        if results != count or queued != 0:
            raise RuntimeError(
                f"huey: {results} results stored and {queued} tasks still queued "
                f"after a drain of {count}"
            )

    def _count_rows(self, table: str) -> int:
        if self._db_path is None:
            raise RuntimeError("HueyAdapter.open() must be called first")
        if self._reader is None:
            self._reader = connect_read_only(self._db_path)
        sql = f"select count(*) from {table} where queue = ?"
        return int(self._reader.execute(sql, (HUEY_NAME,)).fetchone()[0])

    def round_trip(self, i: int, timeout: float) -> None:
        result = self.module.noop(i)
        value = result.get(blocking=True, timeout=timeout)
        if value != i:
            raise RuntimeError(f"huey returned {value!r} for noop({i})")
