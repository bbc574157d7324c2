"""Fixtures of the conformance suite: one fresh backend per test, per backend kind."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conformance_backends import (
    FACTORIES,
    SESSION_FACTORIES,
    BackendTarget,
    BackendUnavailable,
    FakeClock,
)

from backends.redis.cluster import ClusterUnavailable, PrivateRedisCluster, shared_cluster
from sluicegate.backends.base import Backend

TARGET_KEY = pytest.StashKey[BackendTarget]()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedisCluster]:
    """The private three-master Redis Cluster of this test process.

    Raises ``BackendUnavailable`` without the ``redis-server`` binary.
    """
    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(
                shared_cluster(lambda: tmp_path_factory.mktemp("redis-cluster"))
            )
        except ClusterUnavailable as exc:
            raise BackendUnavailable(str(exc)) from None
        yield cluster


@pytest.fixture(params=[*sorted(FACTORIES), *sorted(SESSION_FACTORIES)])
def backend(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Iterator[Backend]:
    """A fresh backend of each kind in ``FACTORIES`` and ``SESSION_FACTORIES``, on ``clock``.

    A backend whose server is missing is skipped, or fails the test when the
    ``CI`` environment variable is set, because CI must run every backend.
    """
    name = request.param
    try:
        if name in SESSION_FACTORIES:
            fixture, factory = SESSION_FACTORIES[name]
            target = factory(request.getfixturevalue(fixture))
        else:
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
