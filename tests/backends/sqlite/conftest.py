"""Fixtures for the SQLite backend tests: a backend on a fresh file and a controllable clock."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The conformance suite's fake clock and job builders live next to its conftest.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "conformance"))

from conformance_backends import FakeClock

from sluicegate.backends.sqlite import SQLiteBackend


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def backend(db_path: Path, clock: FakeClock) -> Iterator[SQLiteBackend]:
    """A backend on a new SQLite file, reading time from ``clock``."""
    opened = SQLiteBackend(str(db_path), clock=clock)
    yield opened
    opened.close()
