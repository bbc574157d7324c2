"""Benchmark sluicegate beside its peers on one Redis server and one PostgreSQL database.

Usage: ``.venv/bin/python benchmarks/redis_peers.py [--brokers redis,postgres] [--only NAMES]``
(``make bench-peers`` installs the ``peers`` extra and runs it with the defaults).

Redis peers: celery, dramatiq, rq, arq and huey (RedisHuey). PostgreSQL peer: procrastinate.
The script starts a private ``redis-server --save "" --appendonly no`` on a free loopback
port and stops it by pid at the end. Between libraries it runs FLUSHALL on that private
server only. For PostgreSQL it creates a database ``sg_peers_<random>`` on the server given
by ``--postgres-url`` and drops it at the end.

For every library, in one pass:

- enqueue: ``--jobs`` one-by-one calls of the library's plain enqueue API from this process
  with no worker running (async libraries: sequential awaits). The first call, which opens
  the connection, is not timed;
- drain: the worker CLI of the library is then started as one command on those jobs, with
  the library's default worker settings (``--sluicegate-concurrency`` changes sluicegate's)
  and WARNING logging. "From start" is jobs / (spawn
  to the last completion) and "steady" is (jobs - 1) / (first to last completion).
  Completions are read from a broker-side count polled every 10 ms (50 ms on PostgreSQL),
  named by each adapter's ``completion_source``;
- latency: with that worker still running, ``--warmup`` round trips, then ``--round-trips``
  sequential enqueue and wait-for-result calls through the library's default result API;
  p50 and p99 in ms.

Every figure is a single run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis
from bench_common import console_script, load_module_from_file
from bench_procs import PeakRssSampler, WorkerProcess, worker_env

REDIS_NAMES = ["sluicegate", "celery", "dramatiq", "rq", "arq", "huey"]
POSTGRES_NAMES = ["sluicegate", "procrastinate"]

# rq's default worker forks one child per job (20 to 80 jobs/s measured on a 2-CPU VM).
# arq's default worker reads at most 100 jobs every 0.5 s (200 jobs/s), and its Job.result()
# polls every 0.5 s. These caps keep the whole script at about 12 minutes on that VM.
DEFAULT_JOB_CAPS = {"rq": 1000, "arq": 5000}
DEFAULT_ROUND_TRIP_CAPS = {"arq": 60}


def version_of(*packages: str) -> str:
    return ", ".join(f"{name} {importlib.metadata.version(name)}" for name in packages)


class Adapter:
    """One library on one broker: a task module in a directory, a producer and a worker CLI."""

    name = ""
    module_name = ""
    packages: tuple[str, ...] = ()
    worker_settings = ""
    result_api = ""
    completion_source = ""

    def __init__(self, directory: Path, url: str) -> None:
        self.directory = directory
        self.url = url
        path = directory / f"{self.module_name}.py"
        path.write_text(self.module_source())
        self.module: Any = load_module_from_file(self.module_name, path)

    @property
    def version(self) -> str:
        return version_of(*self.packages)

    def module_source(self) -> str:
        raise NotImplementedError

    def enqueue_range(self, start: int, stop: int) -> None:
        """Enqueue noop(i) for each i in range(start, stop), one call per job."""
        for i in range(start, stop):
            self.enqueue_one(i)

    def enqueue_one(self, i: int) -> None:
        raise NotImplementedError

    def worker_command(self) -> list[str]:
        raise NotImplementedError

    def completed_count(self, total: int) -> int:
        raise NotImplementedError

    def round_trips(self, first: int, count: int, timeout: float) -> list[float]:
        """Run count sequential round trips and return each one's duration in ms."""
        samples = []
        for i in range(first, first + count):
            started = time.perf_counter()
            self.round_trip(i, timeout)
            samples.append((time.perf_counter() - started) * 1000)
        return samples

    def round_trip(self, i: int, timeout: float) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Close the connections this process holds."""


def check_result(name: str, value: object, expected: int) -> None:
    if value != expected:
        raise RuntimeError(f"{name}: round trip of noop({expected}) returned {value!r}")


class SluicegateAdapter(Adapter):
    name = "sluicegate"
    module_name = "sluicegate_peer_tasks"
    packages = ("sluicegate",)
    worker_settings = "sluicegate worker defaults (one process, concurrency 8 threads)"
    result_api = "job.result(timeout=...)"
    completion_source = "jobs minus the queue's live length (backend.length)"
    #: The worker's ``--concurrency``, or None for its default.
    concurrency: int | None = None

    def module_source(self) -> str:
        return (
            "import sluicegate\n\n"
            f"app = sluicegate.App({self.url!r})\n\n\n"
            '@app.task(queue="bench")\n'
            "def noop(i: int) -> int:\n"
            "    return i\n"
        )

    def enqueue_one(self, i: int) -> None:
        self.module.noop.enqueue(i)

    def worker_command(self) -> list[str]:
        command = [str(console_script("sluicegate")), "--log-level", "warning", "worker"]
        command += [f"{self.module_name}:app", "--queues", "bench"]
        if self.concurrency is not None:
            command += ["--concurrency", str(self.concurrency)]
        return command

    def completed_count(self, total: int) -> int:
        return total - int(self.module.app.backend.length("bench"))

    def round_trip(self, i: int, timeout: float) -> None:
        check_result(self.name, self.module.noop.enqueue(i).result(timeout=timeout), i)

    def close(self) -> None:
        self.module.app.close()


class SluicegatePostgresAdapter(SluicegateAdapter):
    def __init__(self, directory: Path, url: str) -> None:
        super().__init__(directory, url)
        self.module.app.backend.migrate()


class CeleryAdapter(Adapter):
    name = "celery"
    module_name = "celery_peer_tasks"
    packages = ("celery", "kombu")
    worker_settings = "celery worker defaults (pool=prefork, concurrency=CPUs=2, prefetch x4)"
    result_api = "AsyncResult.get(timeout=...) on the Redis result backend (pub/sub)"
    completion_source = "DBSIZE of the result database (one key per finished task)"

    def module_source(self) -> str:
        return (
            "from celery import Celery\n\n"
            f"app = Celery('bench', broker={self.url + '/0'!r}, backend={self.url + '/1'!r})\n\n\n"
            "@app.task\n"
            "def noop(i):\n"
            "    return i\n"
        )

    def enqueue_one(self, i: int) -> None:
        self.module.noop.delay(i)

    def worker_command(self) -> list[str]:
        command = [str(console_script("celery")), "-A", self.module_name, "worker"]
        return [*command, "--loglevel", "WARNING"]

    def completed_count(self, total: int) -> int:
        return int(redis.Redis.from_url(self.url + "/1").dbsize())

    def round_trip(self, i: int, timeout: float) -> None:
        check_result(self.name, self.module.noop.delay(i).get(timeout=timeout), i)

    def close(self) -> None:
        self.module.app.close()


class DramatiqAdapter(Adapter):
    name = "dramatiq"
    module_name = "dramatiq_peer_tasks"
    packages = ("dramatiq",)
    worker_settings = "dramatiq defaults (processes=CPUs=2, threads=8); Results + RedisBackend"
    result_api = "message.get_result(block=True, timeout=...)"
    completion_source = "DBSIZE of the result database (one key per stored result)"

    def module_source(self) -> str:
        return (
            "import logging\n\n"
            "import dramatiq\n"
            "from dramatiq.brokers.redis import RedisBroker\n"
            "from dramatiq.results import Results\n"
            "from dramatiq.results.backends import RedisBackend\n\n"
            'logging.getLogger("dramatiq").setLevel(logging.WARNING)\n'
            f"broker = RedisBroker(url={self.url + '/0'!r})\n"
            f"broker.add_middleware(Results(backend=RedisBackend(url={self.url + '/1'!r})))\n"
            "dramatiq.set_broker(broker)\n\n\n"
            "@dramatiq.actor(store_results=True)\n"
            "def noop(i):\n"
            "    return i\n"
        )

    def enqueue_one(self, i: int) -> None:
        self.module.noop.send(i)

    def worker_command(self) -> list[str]:
        return [str(console_script("dramatiq")), self.module_name]

    def completed_count(self, total: int) -> int:
        return int(redis.Redis.from_url(self.url + "/1").dbsize())

    def round_trip(self, i: int, timeout: float) -> None:
        message = self.module.noop.send(i)
        check_result(self.name, message.get_result(block=True, timeout=int(timeout * 1000)), i)

    def close(self) -> None:
        self.module.broker.close()


class RqAdapter(Adapter):
    name = "rq"
    module_name = "rq_peer_tasks"
    packages = ("rq",)
    worker_settings = "rq worker defaults (rq.Worker: one process, fork per job) plus --quiet"
    result_api = "job.latest_result(timeout=...) (XREAD BLOCK on the job's result stream)"
    completion_source = "ZCARD of rq:finished:default (FinishedJobRegistry)"

    def __init__(self, directory: Path, url: str) -> None:
        super().__init__(directory, url)
        import rq

        self.connection = redis.Redis.from_url(url + "/0")
        self.queue = rq.Queue("default", connection=self.connection)

    def module_source(self) -> str:
        return "def noop(i):\n    return i\n"

    def enqueue_one(self, i: int) -> None:
        self.queue.enqueue(self.module.noop, i)

    def worker_command(self) -> list[str]:
        command = [str(console_script("rq")), "worker", "--url", self.url + "/0"]
        return [*command, "--quiet", "default"]

    def completed_count(self, total: int) -> int:
        return int(self.connection.zcard("rq:finished:default"))

    def round_trip(self, i: int, timeout: float) -> None:
        job = self.queue.enqueue(self.module.noop, i)
        result = job.latest_result(timeout=int(timeout))
        check_result(self.name, None if result is None else result.return_value, i)

    def close(self) -> None:
        self.connection.close()


class HueyAdapter(Adapter):
    name = "huey"
    module_name = "huey_peer_tasks"
    packages = ("huey",)
    worker_settings = "huey_consumer defaults (workers=1, worker_type=thread) plus -q"
    result_api = "result.get(blocking=True, timeout=...) (polls from 50 ms, x1.15 backoff)"
    completion_source = "HLEN of huey.results.bench (one field per stored result)"

    def module_source(self) -> str:
        port = int(self.url.rsplit(":", 1)[1])
        return (
            "from huey import RedisHuey\n\n"
            f"huey = RedisHuey('bench', host='127.0.0.1', port={port})\n\n\n"
            "@huey.task()\n"
            "def noop(i):\n"
            "    return i\n"
        )

    def enqueue_one(self, i: int) -> None:
        self.module.noop(i)

    def worker_command(self) -> list[str]:
        return [str(console_script("huey_consumer")), f"{self.module_name}.huey", "-q"]

    def completed_count(self, total: int) -> int:
        return int(self.module.huey.storage.conn.hlen("huey.results.bench"))

    def round_trip(self, i: int, timeout: float) -> None:
        check_result(self.name, self.module.noop(i).get(blocking=True, timeout=timeout), i)


class ArqAdapter(Adapter):
    name = "arq"
    module_name = "arq_peer_tasks"
    packages = ("arq",)
    worker_settings = "arq defaults (max_jobs=10, poll_delay=0.5 s); WARNING via --custom-log-dict"
    result_api = "await job.result(timeout=...) (polls every 0.5 s)"
    completion_source = "jobs minus ZCARD of arq:queue (a job leaves it when it finishes)"

    def __init__(self, directory: Path, url: str) -> None:
        super().__init__(directory, url)
        from arq import create_pool

        self.loop = asyncio.new_event_loop()
        self.pool = self.loop.run_until_complete(create_pool(self.module.REDIS))
        self.not_found_races = 0

    def module_source(self) -> str:
        port = int(self.url.rsplit(":", 1)[1])
        return (
            "from arq.connections import RedisSettings\n\n"
            f"REDIS = RedisSettings(host='127.0.0.1', port={port})\n"
            "LOG_CONFIG = {\n"
            "    'version': 1,\n"
            "    'disable_existing_loggers': False,\n"
            "    'handlers': {'console': {'class': 'logging.StreamHandler'}},\n"
            "    'loggers': {'arq': {'handlers': ['console'], 'level': 'WARNING'}},\n"
            "}\n\n\n"
            "async def noop(ctx, i):\n"
            "    return i\n\n\n"
            "class WorkerSettings:\n"
            "    functions = [noop]\n"
            "    redis_settings = REDIS\n"
        )

    def enqueue_range(self, start: int, stop: int) -> None:
        async def enqueue() -> None:
            for i in range(start, stop):
                await self.pool.enqueue_job("noop", i)

        self.loop.run_until_complete(enqueue())

    def worker_command(self) -> list[str]:
        command = [str(console_script("arq")), f"{self.module_name}.WorkerSettings"]
        return [*command, "--custom-log-dict", f"{self.module_name}.LOG_CONFIG"]

    def completed_count(self, total: int) -> int:
        return total - int(self.loop.run_until_complete(self.pool.zcard("arq:queue")))

    def round_trips(self, first: int, count: int, timeout: float) -> list[float]:
        from arq.jobs import ResultNotFound

        async def run() -> list[float]:
            samples = []
            for i in range(first, first + count):
                started = time.perf_counter()
                job = await self.pool.enqueue_job("noop", i)
                try:
                    value = await job.result(timeout=timeout)
                except ResultNotFound:
                    # Job.result() reads the result key and the queue in two commands, so a
                    # job that finishes between them raises; the stored result is still there.
                    self.not_found_races += 1
                    info = await job.result_info()
                    value = None if info is None else info.result
                samples.append((time.perf_counter() - started) * 1000)
                check_result(self.name, value, i)
            return samples

        return self.loop.run_until_complete(run())

    def close(self) -> None:
        self.loop.run_until_complete(self.pool.aclose())
        self.loop.close()


class ProcrastinateAdapter(Adapter):
    name = "procrastinate"
    module_name = "procrastinate_peer_tasks"
    packages = ("procrastinate",)
    worker_settings = "procrastinate worker defaults (concurrency=1, listen_notify on)"
    result_api = "defer(), then SELECT status every 1 ms (procrastinate stores no return value)"
    completion_source = "count of procrastinate_jobs rows with status 'succeeded'"

    def __init__(self, directory: Path, url: str) -> None:
        super().__init__(directory, url)
        self.module.app.open()
        self.module.app.schema_manager.apply_schema()
        self.reader = psycopg.connect(url, autocommit=True)

    def module_source(self) -> str:
        return (
            "import procrastinate\n\n"
            "app = procrastinate.App(\n"
            f"    connector=procrastinate.PsycopgConnector(conninfo={self.url!r})\n"
            ")\n\n\n"
            "@app.task(queue='bench')\n"
            "def noop(i):\n"
            "    return i\n"
        )

    def enqueue_one(self, i: int) -> None:
        self.module.noop.defer(i=i)

    def worker_command(self) -> list[str]:
        command = [str(console_script("procrastinate")), "--app", f"{self.module_name}.app"]
        return [*command, "--log-level", "warning", "worker"]

    def completed_count(self, total: int) -> int:
        row = self.reader.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
        ).fetchone()
        return int(row[0]) if row else 0

    def round_trip(self, i: int, timeout: float) -> None:
        job_id = self.module.noop.defer(i=i)
        deadline = time.perf_counter() + timeout
        while True:
            row = self.reader.execute(
                "SELECT status FROM procrastinate_jobs WHERE id = %s", (job_id,)
            ).fetchone()
            if row and row[0] == "succeeded":
                return
            if row and row[0] in ("failed", "cancelled", "aborted"):
                raise RuntimeError(f"procrastinate: job {job_id} ended as {row[0]}")
            if time.perf_counter() > deadline:
                raise TimeoutError(f"procrastinate: job {job_id} not done within {timeout} s")
            time.sleep(0.001)

    def close(self) -> None:
        self.reader.close()
        self.module.app.close()


REDIS_ADAPTERS: dict[str, type[Adapter]] = {
    "sluicegate": SluicegateAdapter,
    "celery": CeleryAdapter,
    "dramatiq": DramatiqAdapter,
    "rq": RqAdapter,
    "arq": ArqAdapter,
    "huey": HueyAdapter,
}
POSTGRES_ADAPTERS: dict[str, type[Adapter]] = {
    "sluicegate": SluicegatePostgresAdapter,
    "procrastinate": ProcrastinateAdapter,
}


@dataclass
class Figures:
    broker: str
    name: str
    version: str = ""
    worker_settings: str = ""
    jobs: int = 0
    round_trip_count: int = 0
    enqueue_rate: float | None = None
    drain_from_start: float | None = None
    drain_steady: float | None = None
    first_completion_s: float | None = None
    peak_rss_mib: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def measure_drain(
    adapter: Adapter, worker: WorkerProcess, jobs: int, interval: float, timeout: float
) -> tuple[float, float, float]:
    """Poll completions until all jobs are done.

    Returns the from-start rate, the steady rate (both in jobs/s) and the seconds from the
    worker's spawn to its first completion.
    """
    first = None
    deadline = time.perf_counter() + timeout
    while True:
        done = adapter.completed_count(jobs)
        now = time.perf_counter()
        if first is None and done > 0:
            first = now
        if done >= jobs:
            break
        worker.check_running()
        if now > deadline:
            raise TimeoutError(
                f"{adapter.name}: {done} of {jobs} jobs done after {timeout:.0f} s\n"
                f"{worker.log_tail()}"
            )
        time.sleep(interval)
    assert first is not None
    elapsed = now - worker.started_at
    return jobs / elapsed, (jobs - 1) / max(now - first, 1e-9), first - worker.started_at


def measure(
    adapter: Adapter, figures: Figures, round_trips: int, options: argparse.Namespace
) -> None:
    jobs = figures.jobs
    interval = 0.05 if figures.broker == "postgres" else 0.01
    adapter.enqueue_range(0, 1)
    started = time.perf_counter()
    adapter.enqueue_range(1, jobs)
    figures.enqueue_rate = (jobs - 1) / (time.perf_counter() - started)
    log(f"{figures.broker}/{adapter.name}: enqueued {jobs} at {figures.enqueue_rate:,.0f}/s")

    env = worker_env(adapter.directory)
    log_path = adapter.directory / f"{adapter.name}-worker.log"
    worker = WorkerProcess(adapter.worker_command(), env, adapter.directory, log_path)
    try:
        with PeakRssSampler(worker) as sampler:
            from_start, steady, boot = measure_drain(
                adapter, worker, jobs, interval, options.timeout
            )
        figures.drain_from_start, figures.drain_steady = from_start, steady
        figures.first_completion_s = boot
        figures.peak_rss_mib = sampler.peak_bytes / 2**20
        log(f"{figures.broker}/{adapter.name}: drained at {from_start:,.0f}/s from start")

        adapter.round_trips(jobs, options.warmup, options.round_trip_timeout)
        samples = adapter.round_trips(
            jobs + options.warmup, round_trips, options.round_trip_timeout
        )
        figures.round_trip_count = len(samples)
        figures.p50_ms = statistics.median(samples)
        figures.p99_ms = statistics.quantiles(samples, n=100, method="inclusive")[98]
        figures.max_ms = max(samples)
        log(f"{figures.broker}/{adapter.name}: round trip p50 {figures.p50_ms:.2f} ms")
        if isinstance(adapter, ArqAdapter) and adapter.not_found_races:
            figures.notes.append(f"arq ResultNotFound races: {adapter.not_found_races}")
    finally:
        worker.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    command = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
    command += ["--appendonly", "no", "--dir", str(directory)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, start_new_session=True)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(redis.ConnectionError):
            if client.ping():
                client.close()
                return process, port
        if time.monotonic() > deadline or process.poll() is not None:
            stop_process(process)
            raise RuntimeError(f"redis-server did not start on port {port} within 10 s")
        time.sleep(0.02)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def run_library(
    broker: str,
    name: str,
    adapter_class: type[Adapter],
    root: Path,
    url: str,
    options: argparse.Namespace,
) -> Figures:
    jobs = min(options.jobs, options.job_caps.get(name, options.jobs))
    round_trips = min(options.round_trips, options.round_trip_caps.get(name, options.round_trips))
    figures = Figures(broker, name, jobs=jobs)
    directory = root / f"{broker}-{name}"
    directory.mkdir()
    sys.path.insert(0, str(directory))
    adapter = None
    try:
        adapter = adapter_class(directory, url)
        if isinstance(adapter, SluicegateAdapter) and options.sluicegate_concurrency is not None:
            adapter.concurrency = options.sluicegate_concurrency
            adapter.worker_settings = (
                f"sluicegate worker, one process, --concurrency {adapter.concurrency}"
            )
        figures.version = adapter.version
        figures.worker_settings = adapter.worker_settings
        measure(adapter, figures, round_trips, options)
    except Exception as exc:
        # One library's failure is reported in its row and does not stop the others.
        figures.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        log(f"{broker}/{name} failed: {figures.error}")
    finally:
        if adapter is not None:
            with contextlib.suppress(Exception):
                adapter.close()
        sys.path.remove(str(directory))
    return figures


def run_redis(root: Path, names: list[str], options: argparse.Namespace) -> list[Figures]:
    server, port = start_redis(root)
    results = []
    try:
        info = redis.Redis(port=port).info("server")
        log(f"private redis-server {info['redis_version']} on 127.0.0.1:{port}")
        for name in names:
            # The server is private to this script, so FLUSHALL deletes no other data.
            redis.Redis(port=port).flushall()
            url = f"redis://127.0.0.1:{port}"
            if name == "sluicegate":
                url += "/0?prefix=bench"
            results.append(run_library("redis", name, REDIS_ADAPTERS[name], root, url, options))
    finally:
        stop_process(server)
    return results


def run_postgres(root: Path, names: list[str], options: argparse.Namespace) -> list[Figures]:
    base = options.postgres_url
    results = []
    for name in names:
        database = f"sg_peers_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(base, autocommit=True) as admin:
            version = admin.execute("SHOW server_version").fetchone()
            log(f"PostgreSQL {version[0] if version else '?'}: creating database {database}")
            admin.execute(f'CREATE DATABASE "{database}"')
        url = f"{base.rsplit('/', 1)[0]}/{database}"
        try:
            results.append(
                run_library("postgres", name, POSTGRES_ADAPTERS[name], root, url, options)
            )
        finally:
            with psycopg.connect(base, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    return results


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def print_report(results: list[Figures], load: tuple[tuple[float, ...], tuple[float, ...]]) -> None:
    print(f"load average (1, 5, 15 min) before: {load[0]}, after: {load[1]}")
    print(f"CPUs: {os.cpu_count()}, Python {sys.version.split()[0]}")
    print()

    header = "| broker | library | N | enqueue 1-by-1 (jobs/s) | drain from start / steady (jobs/s)"
    header += " | start to first completion (s) | round trips | p50 / p99 / max (ms) |"
    header += " peak worker RSS (MiB) |"
    print(header)
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for f in results:
        if f.error:
            print(f"| {f.broker} | {f.name} | {f.jobs} | failed: {f.error} | | | | | |")
            continue
        print(
            f"| {f.broker} | {f.name} | {f.jobs:,} | {fmt(f.enqueue_rate)} | "
            f"{fmt(f.drain_from_start)} / {fmt(f.drain_steady)} | {fmt(f.first_completion_s, 2)} | "
            f"{f.round_trip_count} | {fmt(f.p50_ms, 2)} / {fmt(f.p99_ms, 2)} / "
            f"{fmt(f.max_ms, 1)} | {fmt(f.peak_rss_mib, 1)} |"
        )
    print()

    for f in results:
        notes = "; ".join(f.notes)
        print(f"- {f.broker}/{f.name}: {f.version}; worker: {f.worker_settings}. {notes}")
    print()

    for broker in ("redis", "postgres"):
        ours = next((f for f in results if f.broker == broker and f.name == "sluicegate"), None)
        peers = [
            f for f in results if f.broker == broker and f.name != "sluicegate" and not f.error
        ]
        if ours is None or ours.error or not peers:
            continue
        fastest = max(peers, key=lambda f: f.drain_from_start or 0.0)
        ratio = (ours.drain_from_start or 0.0) / (fastest.drain_from_start or 1.0)
        lowest = min(peers, key=lambda f: f.p50_ms or float("inf"))
        print(
            f"{broker}: sluicegate drain / fastest peer ({fastest.name}) = {ratio:.2f}x "
            f"(target >= 2x: {'met' if ratio >= 2 else 'NOT met'}); sluicegate p50 "
            f"{fmt(ours.p50_ms, 2)} ms vs lowest peer ({lowest.name}) {fmt(lowest.p50_ms, 2)} ms "
            f"(target lowest: {'met' if (ours.p50_ms or 0) < (lowest.p50_ms or 0) else 'NOT met'})"
        )


def parse_caps(text: str, default: dict[str, int]) -> dict[str, int]:
    if not text:
        return dict(default)
    caps = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        caps[name.strip()] = int(value)
    return caps


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])

    parser.add_argument("--brokers", default="redis,postgres", help="comma-separated brokers")
    parser.add_argument("--only", default="", help="comma-separated library names to run")
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs enqueued and drained")
    parser.add_argument("--round-trips", type=int, default=500, help="timed round trips")
    parser.add_argument(
        "--warmup", type=int, default=20, help="untimed round trips before the timed ones"
    )
    parser.add_argument(
        "--job-caps",
        default="",
        help="per-library caps on --jobs as name=count,... (default: rq=1000,arq=5000)",
    )
    parser.add_argument(
        "--round-trip-caps",
        default="",
        help="per-library caps on --round-trips as name=count,... (default: arq=60)",
    )
    parser.add_argument(
        "--sluicegate-concurrency",
        type=int,
        default=None,
        help="sluicegate worker threads, passed as its --concurrency (default: the worker's 8)",
    )
    parser.add_argument(
        "--postgres-url",
        default="postgresql://127.0.0.1:5432/test",
        help="an existing database to connect to for CREATE and DROP DATABASE",
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds allowed for one drain (default 300)"
    )
    parser.add_argument(
        "--round-trip-timeout",
        type=float,
        default=30.0,
        help="seconds allowed for one round trip (default 30)",
    )

    options = parser.parse_args(argv)
    options.job_caps = parse_caps(options.job_caps, DEFAULT_JOB_CAPS)
    options.round_trip_caps = parse_caps(options.round_trip_caps, DEFAULT_ROUND_TRIP_CAPS)
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    only = {name for name in options.only.split(",") if name}
    brokers = [name for name in options.brokers.split(",") if name]
    load_before = os.getloadavg()
    results: list[Figures] = []
    with tempfile.TemporaryDirectory(prefix="sluicegate-peers-") as name:
        root = Path(name)
        if "redis" in brokers:
            names = [n for n in REDIS_NAMES if not only or n in only]
            results += run_redis(root, names, options)
        if "postgres" in brokers:
            names = [n for n in POSTGRES_NAMES if not only or n in only]
            results += run_postgres(root, names, options)
    print_report(results, (load_before, os.getloadavg()))
    return 1 if any(f.error for f in results) else 0


if __name__ == "__main__":
    sys.exit(main())
