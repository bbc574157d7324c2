"""Workers SIGKILLed on PostgreSQL lose no job: their leases expire and the jobs run again."""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.support import (
    WORKER_START_TIMEOUT,
    AppModule,
    WorkerProcess,
    start_worker_process,
    unload_app_module,
    wait_until,
)

from .support import sql_rows, write_app_module

SOURCE = """
@app.task
def record_run(index: int) -> int:
    mark("run")
    time.sleep(0.001)
    return index
"""

JOBS = 5000
WORKERS = 2
KILLS_PER_WORKER = 2
CONCURRENCY = 8
LEASE = 2.0

#: Seconds all jobs may take to finish after the last kill, on a loaded machine.
FINISH_TIMEOUT = 120.0


@pytest.fixture
def module(pg_url: str, tmp_path: Path) -> Iterator[AppModule]:
    made = write_app_module(tmp_path, SOURCE, LEASE, pg_url)
    yield made
    unload_app_module(made)


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    """Every worker process the test starts; each is SIGKILLed by pid at teardown."""
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.kill()


def count_runs(module: AppModule) -> int:
    if not module.log_path.exists():
        return 0
    return module.log_path.read_bytes().count(b"\n")


def leased_by(pg_url: str, pid: int) -> set[str]:
    """Return the ids of messages reserved by the worker process ``pid``."""
    rows = sql_rows(
        pg_url, "SELECT id FROM messages WHERE state = 1 AND worker LIKE %s", [f"%:{pid}"]
    )
    return {row[0] for row in rows}


def test_sigkill_twice_each_loses_no_job(
    module: AppModule,
    workers: list[WorkerProcess],
    pg_url: str,
    request: pytest.FixtureRequest,
) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    task = module.task("record_run")
    ids = [
        job.id
        for start in range(0, JOBS, 1000)
        for job in task.enqueue_many([((i,), {}) for i in range(start, start + 1000)])
    ]

    def start() -> WorkerProcess:
        worker = start_worker_process(module, ["--concurrency", str(CONCURRENCY)], len(workers))
        workers.append(worker)
        worker.wait_log("worker started", WORKER_START_TIMEOUT)
        return worker

    current = [start() for _ in range(WORKERS)]
    # Kill at random points of the drain, each worker KILLS_PER_WORKER times, in random order.
    victims = [slot for slot in range(WORKERS) for _ in range(KILLS_PER_WORKER)]
    rng.shuffle(victims)
    thresholds = sorted(rng.uniform(0.05, 0.8) * JOBS for _ in victims)
    in_flight: Counter[str] = Counter()
    for slot, threshold in zip(victims, thresholds, strict=True):
        wait_until(
            lambda threshold=threshold: count_runs(module) >= threshold,
            FINISH_TIMEOUT,
            f"{int(threshold)} runs before a kill",
            interval=0.01,
        )
        victim = current[slot]
        victim.kill()
        in_flight.update(leased_by(pg_url, victim.pid))
        current[slot] = start()

    records = module.wait_final(ids, timeout=FINISH_TIMEOUT)

    assert {record.state.value for record in records.values()} == {"succeeded"}
    assert module.app.backend.length("default") == 0
    assert sql_rows(pg_url, "SELECT count(*) FROM messages") == [(0,)]
    runs = module.event_counts("run")
    assert set(runs) == set(ids), "some jobs never ran"
    repeated = {job_id: count for job_id, count in runs.items() if count > 1}
    for job_id, count in repeated.items():
        assert count <= 1 + in_flight[job_id], f"job {job_id} ran {count} times"
    summary = (
        f"{len(repeated)} of {JOBS} jobs ran twice or more after {len(victims)} SIGKILLs "
        f"(seed {seed}); {len(in_flight)} messages were under a killed worker's lease"
    )
    print(summary)
    request.node.add_report_section("call", "sigkill", summary)
