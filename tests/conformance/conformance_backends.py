"""Backends the conformance suite runs against, and helpers to build messages and jobs.

Each entry of ``FACTORIES`` turns a test's tmp_path into a ``BackendTarget``:
the location of a fresh, empty backend. A factory for a server backend
(Redis, PostgreSQL, ...) first calls ``require_server``, which raises
``BackendUnavailable`` naming the backend when its server on loopback does
not accept connections. The ``backend`` fixture then skips the test, or
fails it when the ``CI`` environment variable is set.

Adding a backend means adding one factory here and one branch in
``BackendTarget.open``. The backend must accept ``clock=callable``, because
the suite moves time forward instead of sleeping.

``SESSION_FACTORIES`` lists backends whose server a session fixture starts,
such as the private Redis Cluster. Only the conformance suite runs them: its
``backend`` fixture requests the named fixture and passes its value to the
factory.

This module is imported by name (not as a conftest) so that producer
processes started with the ``spawn`` method can unpickle a target.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sluicegate.backends._wakeup import channel_dir
from sluicegate.backends.base import Backend
from sluicegate.message import OutgoingMessage, new_id
from sluicegate.store import NewJob

#: Unix time at which every test's clock starts.
START_TIME = 1_700_000_000.0


class BackendUnavailable(Exception):
    """The server a backend needs does not accept connections; the message names the backend."""


class FakeClock:
    """A clock that moves only when a test calls ``advance``; returns Unix seconds."""

    def __init__(self, start: float = START_TIME) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move the clock forward by ``seconds`` and return the new time."""
        self.now += seconds
        return self.now


@dataclass(frozen=True)
class BackendTarget:
    """Where one test's backend lives: its kind and a file path or server URL."""

    kind: str
    location: str

    def open(self, clock: Callable[[], float] = time.time) -> Backend:
        """Open a new connection to the backend, reading time from ``clock``."""
        if self.kind == "sqlite":
            from sluicegate.backends.sqlite import SQLiteBackend

            return SQLiteBackend(self.location, clock=clock)
        if self.kind == "redis":
            from sluicegate.backends.redis import RedisBackend

            return RedisBackend(self.location, clock=clock)
        if self.kind == "postgresql":
            from sluicegate.backends.postgres import PostgresBackend

            return PostgresBackend(self.location, clock=clock)
        raise ValueError(f"no opener for backend kind {self.kind!r}")

    def cleanup(self) -> None:
        """Remove what the backend left outside tmp_path."""
        if self.kind == "sqlite":
            directory = channel_dir(self.location)
            for path in (directory, directory + "-results"):
                shutil.rmtree(path, ignore_errors=True)
        if self.kind == "redis":
            backend = self.open()
            try:
                backend.delete_all()  # Only the keys under this test's own prefix.
            finally:
                backend.close()
        if self.kind == "postgresql":
            drop_postgres_schema(self.location)


def require_server(name: str, host: str, port: int, timeout: float = 1.0) -> None:
    """Raise ``BackendUnavailable`` naming ``name`` unless a TCP server accepts on host:port.

    Factories of server backends call this first, e.g.
    ``require_server("redis", "127.0.0.1", 6379)``.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise BackendUnavailable(
            f"the {name} server at {host}:{port} does not accept connections ({exc})"
        ) from None


def sqlite_target(tmp_path: Path) -> BackendTarget:
    return BackendTarget("sqlite", str(tmp_path / "conformance.db"))


#: Redis server of the conformance suite; each test uses its own key prefix on it.
REDIS_URL = os.environ.get("SLUICEGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_target(tmp_path: Path) -> BackendTarget:
    from urllib.parse import urlsplit

    address = urlsplit(REDIS_URL)
    require_server("redis", address.hostname or "127.0.0.1", address.port or 6379)
    separator = "&" if "?" in REDIS_URL else "?"
    prefix = f"sgtest-{uuid.uuid4().hex[:12]}"
    return BackendTarget("redis", f"{REDIS_URL}{separator}prefix={prefix}")


#: PostgreSQL database of the conformance suite; each test gets its own schema in it.
POSTGRES_URL = os.environ.get("SLUICEGATE_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")


def postgresql_target(tmp_path: Path) -> BackendTarget:
    """Create a schema named after a random id, with its tables, in the test database."""
    from urllib.parse import urlsplit

    from sluicegate.backends.postgres import PostgresBackend

    address = urlsplit(POSTGRES_URL)
    require_server("postgresql", address.hostname or "127.0.0.1", address.port or 5432)
    separator = "&" if "?" in POSTGRES_URL else "?"
    url = f"{POSTGRES_URL}{separator}schema=sg_test_{uuid.uuid4().hex[:12]}"
    backend = PostgresBackend(url)
    try:
        backend.migrate()
    finally:
        backend.close()
    return BackendTarget("postgresql", url)


def drop_postgres_schema(url: str) -> None:
    """Drop the schema that ``postgresql_target`` created for ``url``, with its tables."""
    import psycopg
    from psycopg import sql

    from sluicegate.backends.postgres import parse_url

    parsed = parse_url(url)
    assert parsed.schema.startswith("sg_test_"), f"refusing to drop schema {parsed.schema!r}"
    with psycopg.connect(parsed.conninfo, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(parsed.schema))
        )


#: Backend name (the test id) to the factory of a fresh target.
FACTORIES: dict[str, Callable[[Path], BackendTarget]] = {
    "sqlite": sqlite_target,
    "redis": redis_target,
    "postgresql": postgresql_target,
}


def redis_cluster_target(cluster: Any) -> BackendTarget:
    """Return a fresh prefix on the private cluster, in a URL that names only its first node.

    ``cluster`` is the ``PrivateRedisCluster`` of the ``redis_cluster``
    fixture. The prefix's slot lands on any of its masters, so most tests
    reach their master through the slot map of another node.
    """
    prefix = f"sgtest-{uuid.uuid4().hex[:12]}"
    return BackendTarget("redis", cluster.url(prefix))


#: Backend name to the session fixture it needs and the factory of a fresh target
#: from that fixture's value.
SESSION_FACTORIES: dict[str, tuple[str, Callable[[Any], BackendTarget]]] = {
    "redis-cluster": ("redis_cluster", redis_cluster_target),
}


def message(
    clock: Callable[[], float],
    queue: str = "q",
    body: bytes = b"{}",
    priority: int = 0,
    delay: float = 0.0,
) -> OutgoingMessage:
    """Build a plain message that becomes ready ``delay`` seconds after ``clock()``."""
    now = clock()
    return OutgoingMessage(new_id(), queue, body, priority, now + delay, now)


def job(
    clock: Callable[[], float],
    queue: str = "q",
    delay: float = 0.0,
    idempotency_key: str | None = None,
    task: str = "tests.task",
) -> NewJob:
    """Build a job whose message becomes ready ``delay`` seconds after ``clock()``."""
    return NewJob(message(clock, queue, delay=delay), task, idempotency_key)
