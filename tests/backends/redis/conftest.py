"""Fixtures for the Redis backend tests: the shared server, private servers, workers.

``redis_url`` points at the shared test server (``SLUICEGATE_TEST_REDIS_URL``,
default ``redis://127.0.0.1:6379/0``) with a key prefix of the test's own,
and deletes every key under that prefix afterwards. ``private_redis`` starts
a ``redis-server`` of the test's own on a free loopback port, which the test
may kill and restart. ``redis_cluster`` is a private three-master Redis
Cluster, started once per test process (see ``cluster.py``). Without a server
(or without the ``redis-server`` binary) a test is skipped, and fails when the
``CI`` environment variable is set.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from sluicegate.backends.redis import RedisBackend
from worker.support import (
    WORKER_START_TIMEOUT,
    AppModule,
    WorkerProcess,
    start_worker_process,
    unload_app_module,
    wait_until,
)

from .cluster import ClusterUnavailable, PrivateRedisCluster, shared_cluster
from .support import RedisApps, write_redis_app_module

#: The shared server the tests use, each under its own key prefix.
REDIS_URL = os.environ.get("SLUICEGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

#: Seconds a private server may take to start replying to PING.
SERVER_START_TIMEOUT = 10.0


def unavailable(reason: str) -> None:
    """Skip the test, or fail it in CI, because a Redis server is missing."""
    if os.environ.get("CI"):
        pytest.fail(f"redis unavailable, and CI runs every backend: {reason}")
    pytest.skip(f"redis unavailable: {reason}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The shared server's URL with a fresh ``prefix``; the prefix's keys are deleted after."""
    address = urlsplit(REDIS_URL)
    host, port = address.hostname or "127.0.0.1", address.port or 6379
    try:
        with socket.create_connection((host, port), timeout=1.0):
            pass
    except OSError as exc:
        unavailable(f"the redis server at {host}:{port} does not accept connections ({exc})")
    separator = "&" if "?" in REDIS_URL else "?"
    url = f"{REDIS_URL}{separator}prefix=sgtest-{uuid.uuid4().hex[:12]}"
    yield url
    backend = RedisBackend(url)
    try:
        backend.delete_all()
    finally:
        backend.close()


class RedisServer:
    """A private ``redis-server`` on a loopback port, with AOF fsynced at every write."""

    def __init__(self, directory: Path, port: int, password: str) -> None:
        self.directory = directory
        self.port = port
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"redis://:{password}@127.0.0.1:{port}/0"

    def start(self) -> None:
        log = self.directory / "redis.log"
        command = [
            "redis-server",
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--requirepass", self.password,
            "--logfile", str(log),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
        client = redis.Redis(port=self.port, password=self.password, socket_timeout=1.0)
        try:
            wait_until(
                lambda: self._replies_to_ping(client), SERVER_START_TIMEOUT, "redis-server to start"
            )
        finally:
            client.close()

    def _replies_to_ping(self, client: redis.Redis) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"redis-server exited with {self.process.returncode}")
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """SIGKILL the server and reap it; AOF with fsync at every write keeps its data."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        self.process = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A running private redis-server, killed at teardown."""
    if shutil.which("redis-server") is None:
        unavailable("no redis-server binary on PATH")
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory, free_port(), f"pw-{uuid.uuid4().hex[:8]}")
    server.start()
    yield server
    server.kill()


@pytest.fixture
def redis_apps(tmp_path: Path) -> Iterator[RedisApps]:
    """Return a factory of app modules on a Redis URL; starts and kills their workers."""
    modules: list[AppModule] = []
    workers: list[WorkerProcess] = []

    def make(source: str, url: str, lease: float = 2.0) -> AppModule:
        module = write_redis_app_module(tmp_path, source, url, lease)
        modules.append(module)
        return module

    def start(module: AppModule, *args: str) -> WorkerProcess:
        worker = start_worker_process(module, args, len(workers))
        workers.append(worker)
        worker.wait_log("worker started", WORKER_START_TIMEOUT)
        return worker

    yield RedisApps(make, start, workers)
    for worker in workers:
        worker.kill()
    for module in modules:
        unload_app_module(module)


@pytest.fixture
def private_sentinel(tmp_path: Path) -> Iterator[str]:
    """Start a private primary and one Sentinel watching it; return a redis+sentinel URL."""
    if shutil.which("redis-server") is None:
        unavailable("no redis-server binary on PATH")
    directory = tmp_path / "sentinel"
    directory.mkdir()
    primary_port, sentinel_port = free_port(), free_port()
    config = directory / "sentinel.conf"
    config.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {directory}\n"
        f"sentinel monitor primary 127.0.0.1 {primary_port} 1\n"
    )
    commands = [
        ["redis-server", "--bind", "127.0.0.1", "--port", str(primary_port), "--save", ""],
        ["redis-server", str(config), "--sentinel"],
    ]
    processes = [
        subprocess.Popen(command, stdout=subprocess.DEVNULL, start_new_session=True)
        for command in commands
    ]
    try:
        sentinel = redis.Redis(port=sentinel_port, socket_timeout=1.0)
        wait_until(
            lambda: _names_primary(sentinel, "primary"),
            SERVER_START_TIMEOUT,
            "sentinel to name a primary",
        )
        sentinel.close()
        yield f"redis+sentinel://127.0.0.1:{sentinel_port}/primary/0?prefix=sgsentinel"
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)


def _names_primary(sentinel: redis.Redis, service: str) -> bool:
    try:
        return bool(sentinel.sentinel_get_master_addr_by_name(service))
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedisCluster]:
    """The private three-master cluster of this test process, stopped when the session ends."""
    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(
                shared_cluster(lambda: tmp_path_factory.mktemp("redis-cluster"))
            )
        except ClusterUnavailable as exc:
            unavailable(str(exc))
        yield cluster
