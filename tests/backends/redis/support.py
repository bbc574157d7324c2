"""Helpers for the Redis worker tests: app modules on a Redis URL, lease inspection."""

from __future__ import annotations

import importlib
import socket
import sys
import textwrap
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sluicegate.backends.redis import RedisBackend
from worker.support import APP_HEADER, AppModule, WorkerProcess


def write_redis_app_module(directory: Path, source: str, url: str, lease: float) -> AppModule:
    """Write an app module on ``url`` with the worker tests' header and ``source``; import it."""
    name = f"tasks_{uuid.uuid4().hex[:12]}"
    log_path = directory / "events.log"
    text = APP_HEADER.format(log_path=str(log_path), url=url, lease=lease)
    (directory / f"{name}.py").write_text(text + textwrap.dedent(source))
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    module = importlib.import_module(name)
    return AppModule(name, directory, module)


@dataclass
class RedisApps:
    """What the ``redis_apps`` fixture returns.

    ``make(source, url, lease=2.0)`` writes an app module, and
    ``start(module, *worker_args)`` runs a worker for it and waits until it
    logs that it started. Every worker is SIGKILLed at teardown.
    """

    make: Callable[..., AppModule]
    start: Callable[..., WorkerProcess]
    workers: list[WorkerProcess]


def leased_by(module: AppModule, queue: str, worker: WorkerProcess) -> set[str]:
    """Return the ids of messages in ``queue`` that ``worker`` holds a lease on now."""
    backend = module.app.backend
    assert isinstance(backend, RedisBackend)
    client = backend._client
    tag = backend.layout.tag
    ids = [member.decode() for member in client.zrange(f"{tag}:q:{queue}:leased", 0, -1)]
    name = f"{socket.gethostname()}:{worker.pid}".encode()
    owners = [client.hget(backend.layout.message(message_id), "worker") for message_id in ids]
    return {message_id for message_id, owner in zip(ids, owners, strict=True) if owner == name}
