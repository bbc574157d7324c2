"""Fixtures for the limiter tests: a controllable clock and a fresh store of every backend kind."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# The conformance suite's backend registry and fake clock live next to its conftest.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "conformance"))

from conformance_backends import FACTORIES, BackendTarget, BackendUnavailable, FakeClock

from sluicegate.backends.base import Backend


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=sorted(FACTORIES))
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BackendTarget]:
    """A fresh backend of each kind in ``FACTORIES``.

    A missing server skips the test, or fails it when the ``CI`` variable is set.
    """
    try:
        backend_target = FACTORIES[request.param](tmp_path)
    except BackendUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{request.param} backend unavailable, and CI runs every backend: {exc}")
        pytest.skip(f"{request.param} backend unavailable: {exc}")
    yield backend_target
    backend_target.cleanup()


@pytest.fixture
def connect(target: BackendTarget, clock: FakeClock) -> Iterator[Callable[[], Backend]]:
    """Open connections to this test's backend that read time from ``clock``.

    Every connection opened is closed after the test.
    """
    opened: list[Backend] = []

    def open_connection() -> Backend:
        connection = target.open(clock)
        opened.append(connection)
        return connection

    yield open_connection
    for connection in opened:
        connection.close()


@pytest.fixture
def store(connect: Callable[[], Backend]) -> Backend:
    """One connection to a fresh backend of each kind."""
    return connect()
