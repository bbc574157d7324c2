"""Fixtures of the conformance suite: one fresh backend per test, per backend kind."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conformance_backends import FACTORIES, BackendTarget, BackendUnavailable, FakeClock

from sluicegate.backends.base import Backend

TARGET_KEY = pytest.StashKey[BackendTarget]()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=sorted(FACTORIES))
def backend(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Iterator[Backend]:
    """A fresh backend of each kind in ``FACTORIES``, reading time from ``clock``.

    A backend whose server is missing is skipped, or fails the test when the
    ``CI`` environment variable is set, because CI must run every backend.
    """
    name = request.param
    try:
        target = FACTORIES[name](tmp_path)
    except BackendUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{name} backend unavailable, and CI runs every backend: {exc}")
        pytest.skip(f"{name} backend unavailable: {exc}")
    request.node.stash[TARGET_KEY] = target
    opened = target.open(clock)
    yield opened
    opened.close()
    target.cleanup()


@pytest.fixture
def backend_target(request: pytest.FixtureRequest, backend: Backend) -> BackendTarget:
    """The location of this test's ``backend``, for opening it from elsewhere."""
    return request.node.stash[TARGET_KEY]


@pytest.fixture
def connect(backend_target: BackendTarget, clock: FakeClock) -> Iterator[Callable[[], Backend]]:
    """Open further connections to this test's backend; each is closed afterwards."""
    opened: list[Backend] = []

    def open_connection() -> Backend:
        connection = backend_target.open(clock)
        opened.append(connection)
        return connection

    yield open_connection
    for connection in opened:
        connection.close()
