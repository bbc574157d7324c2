"""Measure sluicegate on PostgreSQL: enqueue rate, drain rate and round-trip latency.

Usage: ``.venv/bin/python benchmarks/postgres_bench.py [URL]`` where URL is a
database (default ``postgresql://127.0.0.1:5432/test``). The script works in
a schema of its own, ``sg_bench_<random>``, and drops it at the end. It runs:

- enqueue: ``ENQUEUE_JOBS`` one-by-one ``task.enqueue`` calls, no worker running;
- drain: ``DRAIN_JOBS`` no-op jobs in the queue (the enqueued ones, the
  rest added with ``enqueue_many``), then one
  ``sluicegate worker`` process; the rate counts from the worker's start
  until the queue's length reaches 0 (polled every 50 ms);
- latency: with that worker still running, 20 warm-up round trips and then
  ``ROUND_TRIPS`` sequential ``enqueue`` + ``result()`` calls; p50 and p99 in ms.

Each figure is a single run; repeat the script to see the spread.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

ENQUEUE_JOBS = 2000
DRAIN_JOBS = 20_000
ROUND_TRIPS = 500
WARM_UP = 20
CONCURRENCY = 8

APP_SOURCE = """\
import sluicegate

app = sluicegate.App({url!r})


@app.task(queue="bench")
def noop(i: int) -> int:
    return i
"""


def main() -> None:
    base = sys.argv[1] if len(sys.argv) > 1 else "postgresql://127.0.0.1:5432/test"
    schema = f"sg_bench_{uuid.uuid4().hex[:10]}"
    url = f"{base}{'&' if '?' in base else '?'}schema={schema}"
    directory = Path(tempfile.mkdtemp(prefix="sluicegate-bench-"))
    (directory / "bench_app.py").write_text(APP_SOURCE.format(url=url))
    sys.path.insert(0, str(directory))
    try:
        run(url, directory)
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def run(url: str, directory: Path) -> None:
    import bench_app

    app = bench_app.app
    app.backend.migrate()  # type: ignore[attr-defined]
    server = psycopg.connect(url.split("?")[0]).execute("SHOW server_version").fetchone()
    print(f"PostgreSQL {server[0] if server else '?'}, {os.cpu_count()} CPUs, single runs")

    started = time.perf_counter()
    for i in range(ENQUEUE_JOBS):
        bench_app.noop.enqueue(i)
    enqueue_rate = ENQUEUE_JOBS / (time.perf_counter() - started)
    print(f"enqueue one-by-one: {enqueue_rate:,.0f} jobs/s ({ENQUEUE_JOBS} jobs)")

    # The jobs enqueued above stay in the queue and count towards the drain.
    for start in range(0, DRAIN_JOBS - ENQUEUE_JOBS, 1000):
        bench_app.noop.enqueue_many([((i,), {}) for i in range(start, start + 1000)])
    worker = start_worker(directory)
    try:
        started = time.perf_counter()
        drain_until_empty(app)
        drain_rate = DRAIN_JOBS / (time.perf_counter() - started)
        print(f"drain from worker start: {drain_rate:,.0f} jobs/s ({DRAIN_JOBS} jobs, 1 worker)")

        for i in range(WARM_UP):
            bench_app.noop.enqueue(i).result(timeout=30)
        latencies = []
        for i in range(ROUND_TRIPS):
            started = time.perf_counter()
            bench_app.noop.enqueue(i).result(timeout=30)
            latencies.append((time.perf_counter() - started) * 1000)
        p50 = statistics.median(latencies)
        p99 = statistics.quantiles(latencies, n=100)[98]
        print(f"round trip: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(latencies):.1f} ms")
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
        app.close()


def start_worker(directory: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-c", "from sluicegate.cli.main import main; main()"]
    return subprocess.Popen(
        [*command, "--log-level", "warning", "worker", "bench_app:app", "-c", str(CONCURRENCY)],
        cwd=directory,
        start_new_session=True,
    )


def drain_until_empty(app: object, timeout: float = 600.0) -> None:
    """Wait until the bench queue is empty."""
    backend = app.backend  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while backend.length("bench") > 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the bench queue did not drain within {timeout:g}s")
        time.sleep(0.05)


if __name__ == "__main__":
    main()
