"""Fixtures for the worker tests: app modules in ``tmp_path`` and worker subprocesses.

Every worker a test starts is SIGKILLed with its process group at teardown,
whether the test passed or not. When a test fails, the tail of each worker's
log is attached to the report.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .support import (
    APP_HEADER,
    WORKER_START_TIMEOUT,
    AppModule,
    MakeApp,
    StartWorker,
    WorkerProcess,
    start_worker_process,
    unload_app_module,
    write_app_module,
)

#: Lines of each worker's log attached to a failed test's report.
LOG_TAIL_LINES = 60

WORKERS_KEY = pytest.StashKey[list[WorkerProcess]]()


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[MakeApp]:
    """Return a factory: ``make_app(source, lease=2.0, header=APP_HEADER)`` imports a new app."""
    made: list[AppModule] = []

    def make(source: str, lease: float = 2.0, header: str = APP_HEADER) -> AppModule:
        module = write_app_module(tmp_path, source, lease, header)
        made.append(module)
        return module

    yield make
    for module in made:
        unload_app_module(module)


@pytest.fixture
def worker_loop(request: pytest.FixtureRequest) -> str:
    """The worker's ``--loop``: ``auto`` unless a test parametrizes it (indirectly)."""
    return str(getattr(request, "param", "auto"))


@pytest.fixture
def start_worker(
    request: pytest.FixtureRequest, make_app: MakeApp, worker_loop: str
) -> Iterator[StartWorker]:
    """Return a factory: ``start_worker(module, *args, ready=True)`` runs a worker.

    With ``ready`` it waits until the worker logs that it started, which it
    does after binding its wake-up socket. A test that parametrizes
    ``worker_loop`` runs its workers with that ``--loop``. It depends on ``make_app`` so that
    the workers are killed before the app modules are unloaded.
    """
    started: list[WorkerProcess] = []
    request.node.stash[WORKERS_KEY] = started

    def start(module: AppModule, *args: str, ready: bool = True) -> WorkerProcess:
        if worker_loop != "auto":
            args = ("--loop", worker_loop, *args)
        worker = start_worker_process(module, args, len(started))
        started.append(worker)
        if ready:
            worker.wait_log("worker started", WORKER_START_TIMEOUT)
        return worker

    yield start
    for worker in started:
        worker.kill()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when != "call" or not report.failed:
        return
    for worker in item.stash.get(WORKERS_KEY, []):
        tail = "\n".join(worker.log().splitlines()[-LOG_TAIL_LINES:])
        report.sections.append((f"worker pid {worker.pid} log (tail)", tail))
