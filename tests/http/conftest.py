"""Fixtures for the HTTP tests: a deployment of server and worker subprocesses.

Every process a test starts is SIGKILLed with its process group at teardown.
When a test fails, the tail of each process's log is attached to the report.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from http_support import Deployment

from sluicegate.backends._wakeup import channel_dir

#: Lines of each process's log attached to a failed test's report.
LOG_TAIL_LINES = 60

DEPLOYMENT_KEY = pytest.StashKey[Deployment]()


@pytest.fixture
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    """An app module in ``tmp_path``; ``.serve()`` starts a server, ``.worker()`` a worker."""
    made = Deployment(tmp_path)
    request.node.stash[DEPLOYMENT_KEY] = made
    yield made
    made.kill_all()
    directory = channel_dir(str(made.db_path))
    for path in (directory, directory + "-results"):
        shutil.rmtree(path, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when != "call" or not report.failed or DEPLOYMENT_KEY not in item.stash:
        return
    for pid, log in item.stash[DEPLOYMENT_KEY].logs():
        tail = "\n".join(log.splitlines()[-LOG_TAIL_LINES:])
        report.sections.append((f"pid {pid} log (tail)", tail))
