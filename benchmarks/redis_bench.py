"""Benchmark sluicegate on Redis: enqueue rate, drain of no-op jobs, round-trip latency.

Usage: ``.venv/bin/python benchmarks/redis_bench.py [--jobs 20000] [--round-trips 500]``

It starts a private ``redis-server`` on a free loopback port with no
persistence (``--save "" --appendonly no``, as the peer figures were taken),
and kills it by pid at the end. Figures:

- enqueue: ``task.enqueue`` one by one from one process, and ``enqueue_many``
  in chunks of 1,000, in jobs per second;
- drain: the queue is filled with ``--jobs`` no-op jobs, then one
  ``sluicegate worker`` process (concurrency 8) is started. "From start" is
  jobs / (spawn to the last completion), and "steady" is (jobs - 1) / (first
  to last completion). Completions are read from the queue's length every 10 ms;
- latency: with the worker running, 20 warm-up round trips, then
  ``--round-trips`` sequential ``enqueue`` and ``job.result()`` calls; p50 and p99 in ms.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

MODULE_SOURCE = """\
import sluicegate

app = sluicegate.App({url!r})


@app.task(queue="bench")
def noop(i: int) -> int:
    return i
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(directory: Path, port: int) -> subprocess.Popen[bytes]:
    command = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
    command += ["--appendonly", "no", "--dir", str(directory)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, start_new_session=True)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(redis.ConnectionError):
            if client.ping():
                return process
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("redis-server did not start within 10 s")
        time.sleep(0.02)


def start_worker(directory: Path, module: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-c", "from sluicegate.cli.main import main; main()"]
    command += ["--log-level", "warning", "worker", f"{module}:app", "-c", "8"]
    env = dict(os.environ, PYTHONPATH=str(directory))
    return subprocess.Popen(command, cwd=directory, env=env, start_new_session=True)


def stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


def measure_enqueue(module: Any, jobs: int) -> tuple[float, float]:
    started = time.perf_counter()
    for i in range(jobs):
        module.noop.enqueue(i)
    one_by_one = jobs / (time.perf_counter() - started)
    started = time.perf_counter()
    for start in range(0, jobs, 1000):
        module.noop.enqueue_many([((i,), {}) for i in range(start, min(start + 1000, jobs))])
    bulk = jobs / (time.perf_counter() - started)
    return one_by_one, bulk


def measure_drain(module: Any, directory: Path, jobs: int) -> tuple[float, float, Any]:
    backend = module.app.backend
    spawned = time.perf_counter()
    worker = start_worker(directory, module.__name__)
    first = None
    deadline = time.monotonic() + 600
    while True:
        left = backend.length("bench")
        now = time.perf_counter()
        if first is None and left < jobs:
            first = now
        if left == 0:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"drain did not finish within 600 s; {left} jobs left")
        time.sleep(0.01)
    assert first is not None
    return jobs / (now - spawned), (jobs - 1) / max(now - first, 1e-9), worker


def measure_latency(module: Any, round_trips: int) -> tuple[float, float]:
    for i in range(20):
        module.noop.enqueue(i).result(timeout=10)
    samples = []
    for i in range(round_trips):
        started = time.perf_counter()
        module.noop.enqueue(i).result(timeout=10)
        samples.append((time.perf_counter() - started) * 1000)
    cuts = statistics.quantiles(samples, n=100)
    return statistics.median(samples), cuts[98]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per enqueue and drain run")
    parser.add_argument("--round-trips", type=int, default=500, help="latency samples")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sluicegate-redis-bench-") as name:
        directory = Path(name)
        port = free_port()
        server = start_server(directory, port)
        worker = None
        try:
            url = f"redis://127.0.0.1:{port}/0?prefix=bench"
            (directory / "bench_tasks.py").write_text(MODULE_SOURCE.format(url=url))
            sys.path.insert(0, str(directory))
            import bench_tasks  # type: ignore[import-not-found]

            one_by_one, bulk = measure_enqueue(bench_tasks, options.jobs)
            # The server is private, so flushing it deletes no other data.
            redis.Redis(port=port).flushall()
            bench_tasks.noop.enqueue_many([((i,), {}) for i in range(options.jobs)])
            from_start, steady, worker = measure_drain(bench_tasks, directory, options.jobs)
            p50, p99 = measure_latency(bench_tasks, options.round_trips)
        finally:
            if worker is not None:
                stop(worker)
            stop(server)
    print(f"enqueue one by one:        {one_by_one:8.0f} jobs/s")
    print(f"enqueue_many (1,000):      {bulk:8.0f} jobs/s")
    print(f"drain from start / steady: {from_start:8.0f} / {steady:.0f} jobs/s")
    print(f"round trip p50 / p99:      {p50:8.2f} / {p99:.2f} ms")


if __name__ == "__main__":
    main()
