"""Fixtures shared by every test: a database file in tmp_path and an App on it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluicegate import App
from sluicegate.backends._wakeup import channel_dir


def remove_wake_dirs(database_path: str | Path) -> None:
    """Delete the wake-up socket directories the SQLite backend made for one database.

    They live in the system temporary directory, outside tmp_path, so a test
    that opened a backend on ``database_path`` calls this when it is done.
    """
    directory = channel_dir(str(database_path))
    for path in (directory, directory + "-results"):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def db_path(tmp_path: Path) -> Iterator[Path]:
    """A fresh SQLite database path; its wake-up directories are removed afterwards."""
    path = tmp_path / "jobs.db"
    yield path
    remove_wake_dirs(path)


@pytest.fixture
def db_url(db_path: Path) -> str:
    """The ``sqlite:////absolute/path`` URL of ``db_path``."""
    return f"sqlite:///{db_path}"


@pytest.fixture
def app(db_url: str) -> Iterator[App]:
    """An App on a fresh SQLite file, closed after the test."""
    application = App(db_url)
    yield application
    application.close()
