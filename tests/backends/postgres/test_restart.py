"""A PostgreSQL restart while a worker drains: the worker reconnects and every job completes."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluicegate.backends.postgres import PostgresBackend
from worker.support import (
    WORKER_START_TIMEOUT,
    AppModule,
    WorkerProcess,
    start_worker_process,
    unload_app_module,
    wait_until,
)

from .cluster import ClusterUnavailable, PrivateCluster
from .support import write_app_module

SOURCE = """
@app.task
def record_run(index: int) -> int:
    mark("run")
    time.sleep(0.01)
    return index
"""

JOBS = 400
CONCURRENCY = 4
LEASE = 5.0


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    """A private cluster on a free port; stopped, and its postmaster killed by pid, afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="sluicegate-pg-"))
    os.chmod(directory, 0o755)
    started: PrivateCluster | None = None
    try:
        try:
            started = PrivateCluster(directory)
            started.init()
            started.start()
        except ClusterUnavailable as exc:
            if os.environ.get("CI"):
                pytest.fail(f"cannot start a private PostgreSQL cluster: {exc}")
            pytest.skip(f"cannot start a private PostgreSQL cluster: {exc}")
        yield started
    finally:
        if started is not None:
            started.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def module(cluster: PrivateCluster, tmp_path: Path) -> Iterator[AppModule]:
    url = f"{cluster.url}?schema=sluicegate"
    backend = PostgresBackend(url)
    try:
        backend.migrate()
    finally:
        backend.close()
    made = write_app_module(tmp_path, SOURCE, LEASE, url)
    yield made
    unload_app_module(made)


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    """Every worker process the test starts; each is SIGKILLed by pid at teardown."""
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.kill()


def test_restart_while_draining(
    cluster: PrivateCluster, module: AppModule, workers: list[WorkerProcess]
) -> None:
    task = module.task("record_run")
    ids = [job.id for job in task.enqueue_many([((i,), {}) for i in range(JOBS)])]
    worker = start_worker_process(module, ["--concurrency", str(CONCURRENCY)], 0)
    workers.append(worker)
    worker.wait_log("worker started", WORKER_START_TIMEOUT)
    wait_until(lambda: len(module.events("run")) >= JOBS // 10, 60, "the drain to start")

    cluster.restart()
    runs_at_restart = len(module.events("run"))
    worker.wait_log("postgresql connection restored", 60)
    worker.wait_log("listen connection restored", 60)
    records = module.wait_final(ids, timeout=120)

    assert runs_at_restart < JOBS, "every job ran before the restart; nothing was tested"
    assert {record.state.value for record in records.values()} == {"succeeded"}
    assert module.app.backend.length("default") == 0
    runs = module.event_counts("run")
    assert set(runs) == set(ids), "some jobs never ran"
    assert worker.alive
    reconnection = [
        line
        for line in worker.log().splitlines()
        if "postgresql" in line.split(" ", 4)[-1] or "listen connection" in line
    ]
    print(
        f"{sum(1 for count in runs.values() if count > 1)} of {JOBS} jobs ran twice across "
        f"the restart; {runs_at_restart} had run before it. Worker log:",
        *reconnection,
        sep="\n",
    )
