"""The interface each queue library implements for the benchmark, and helpers they share."""

from __future__ import annotations

import importlib.util
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Protocol

#: Values of SQLite's `pragma synchronous`, by the number the pragma returns.
SYNCHRONOUS_NAMES = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


@dataclass(frozen=True)
class StorageSettings:
    """SQLite settings of the connection a library enqueues through."""

    journal_mode: str
    synchronous: str
    transactions: str

    @property
    def durable(self) -> bool:
        # In WAL mode SQLite syncs the WAL at each commit only at FULL and EXTRA. At NORMAL it
        # syncs at checkpoints, so a power loss or OS crash can roll back recent commits.
        return self.synchronous in ("FULL", "EXTRA")

    def __str__(self) -> str:
        return (
            f"journal_mode={self.journal_mode}, synchronous={self.synchronous}, {self.transactions}"
        )


def read_storage_settings(connection: sqlite3.Connection, transactions: str) -> StorageSettings:
    """Read journal_mode and synchronous from a library's own connection."""
    journal_mode = connection.execute("pragma journal_mode").fetchone()[0]
    level = connection.execute("pragma synchronous").fetchone()[0]
    return StorageSettings(journal_mode, SYNCHRONOUS_NAMES.get(level, str(level)), transactions)


class QueueAdapter(Protocol):
    """One queue library, driven by the benchmark through a task module in a temporary directory.

    Each phase calls open() on a fresh directory, so every phase starts on a new database file.
    """

    name: str
    version: str
    has_bulk_enqueue: bool

    def open(self, directory: Path) -> None:
        """Write the task module into directory and import it in this process."""

    def close(self) -> None:
        """Close every database connection this process holds."""

    def storage_settings(self) -> StorageSettings:
        """Return the SQLite settings of the connection this process enqueues through."""

    def describe_worker(self) -> str:
        """Return the worker settings used, for the report."""

    def enqueue_one(self, i: int) -> None:
        """Enqueue noop(i) durably, committing before return."""

    def enqueue_bulk(self, numbers: list[int]) -> None:
        """Enqueue noop(i) for every i in numbers with the library's bulk API."""

    def prefill(self, count: int) -> None:
        """Enqueue noop(i) for i in range(count) by the fastest route. This is not timed."""

    def worker_command(self) -> list[str]:
        """Return the command line that starts one worker process on the task module."""

    def completed_count(self) -> int:
        """Return how many jobs have finished, read from the database file."""

    def verify_drained(self, count: int) -> None:
        """Raise RuntimeError unless all count jobs of a drain succeeded and none is queued."""

    def round_trip(self, i: int, timeout: float) -> None:
        """Enqueue noop(i), block until its result arrives and check that the result is i."""


def load_module_from_file(module_name: str, path: Path) -> ModuleType:
    """Import path as module_name, replacing any module of that name loaded before."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path} as {module_name}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def connect_read_only(db_path: Path) -> sqlite3.Connection:
    """Open db_path read-only, so that polling it cannot write or take a write lock."""
    return sqlite3.connect(f"{db_path.as_uri()}?mode=ro", uri=True, timeout=5.0)


def console_script(name: str) -> Path:
    """Return the path of a console script installed next to this Python interpreter."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(
            f"console script {name!r} not found in {path.parent}; "
            "run `make bench` or `pip install -e '.[bench]'` first"
        )
    return path
