"""Fixtures for the scheduler tests: an app on a fresh SQLite file and a controllable clock.

The scheduler and its store read time from the same ``FakeClock``, so lock
leases, idempotency keys and fire times all move together when a test
advances the clock, and no test waits for real minutes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The conformance suite's backend registry and fake clock live next to its conftest.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "conformance"))

from conformance_backends import FakeClock

from sluicegate import App
from sluicegate.backends.sqlite import SQLiteBackend

from .support import START


@pytest.fixture
def clock() -> FakeClock:
    """A clock at ``START`` (2024-01-01T00:00:00Z) that moves only when a test moves it."""
    return FakeClock(START.timestamp())


@pytest.fixture
def store(db_path: Path, app: App, clock: FakeClock) -> Iterator[SQLiteBackend]:
    """A second connection to the app's database that reads time from ``clock``."""
    backend = SQLiteBackend(str(db_path), clock=clock)
    yield backend
    backend.close()
