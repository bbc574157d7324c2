"""Fixtures for the breaker tests: a controllable clock and breakers on a SQLite store."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# The conformance suite's backend registry and fake clock live next to its conftest.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "conformance"))

from conformance_backends import FakeClock

from sluicegate.backends.sqlite import SQLiteBackend
from sluicegate.breaker import Breaker


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(db_path: Path, clock: FakeClock) -> Iterator[SQLiteBackend]:
    """A SQLite store on a fresh file that reads time from ``clock``."""
    backend = SQLiteBackend(str(db_path), clock=clock)
    yield backend
    backend.close()


@pytest.fixture
def make_breaker(store: SQLiteBackend, clock: FakeClock) -> Callable[..., Breaker]:
    """Build a breaker named ``dep`` on ``store`` and ``clock``, with the given options."""

    def build(name: str = "dep", **options: Any) -> Breaker:
        return Breaker(name, store, clock=clock, **options)

    return build
