"""Benchmark enqueue over HTTP: `sluicegate serve` beside a bare Starlette app, in one run.

Run it as `.venv/bin/python benchmarks/http_enqueue.py` (`make bench-http` does exactly
that); `--requests 1000 --clients 8` gives a quick run. It starts two servers, one after
the other, each as one uvicorn process on a free port of 127.0.0.1:

1. sluicegate: `sluicegate --log-level warning serve http_bench_app:app --port 0`, where
   the app uses a SQLite store in a new temporary directory and has one task,
   `http_bench_app.noop`, on queue `bench` (bounded to 10,000,000 messages, so no request
   meets the bound). Each request creates a job, committed with `synchronous=FULL`.
2. baseline: `benchmarks/http_baseline.py`, a Starlette app whose one route,
   `POST /v1/queues/{queue}/jobs`, parses the same JSON body and returns 202 without
   touching a store. It runs on uvicorn with the settings of `sluicegate serve`.

For each server, --clients asyncio tasks in this process, each with its own
`httpx.AsyncClient` holding one keep-alive connection, post
`{"task": "http_bench_app.noop", "args": [i]}` in a loop. First --warmup requests are sent
and not counted. Then the timed phase sends --requests requests, or stops sending after
--max-seconds, whichever comes first. It reports:

- requests/s: requests completed in the timed phase over its wall time;
- p50 and p99 latency: from just before `client.post` to the parsed response, per request;
- server CPU per request: user plus system CPU time of the server process over the timed
  phase, divided by its requests;
- load generator CPU: this process's CPU time over the timed phase, as % of one core. A
  figure near 100% means the generator, not the server, set the rate.

Every response must be 202, or the script exits with an error. After the sluicegate run,
its queue must contain exactly one job per request sent, warm-up included.

Each server is stopped by pid: SIGTERM, then SIGKILL if it is still running after 10 s.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import platform
import re
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx
import orjson
from bench_common import console_script
from bench_procs import WorkerProcess, wait_for
from bench_sluicegate import source_digest

import sluicegate
from sluicegate.backends._wakeup import channel_dir

BENCHMARKS_DIR = Path(__file__).resolve().parent
APP_MODULE = "http_bench_app"
TASK = f"{APP_MODULE}.noop"
QUEUE = "bench"
SERVER_START_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 30.0
URL_PATTERN = re.compile(r"listening url=(http://\S+)")

APP_SOURCE = """\
import sluicegate

app = sluicegate.App({url!r})
app.queue({queue!r}, max_length=10_000_000)


@app.task(queue={queue!r})
def noop(i: int) -> None:
    pass
"""

VERSIONED_PACKAGES = ("uvicorn", "h11", "starlette", "fastapi", "pydantic", "httpx", "orjson")


@dataclass
class Phase:
    """Measurements of one timed phase against one server. Times are in seconds."""

    server: str
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    server_cpu: float = 0.0
    client_cpu: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile_ms(self, fraction: float) -> float:
        """Return the latency at ``fraction`` (nearest rank), in milliseconds."""
        ordered = sorted(self.latencies)
        rank = max(1, round(fraction * len(ordered)))
        return ordered[rank - 1] * 1000

    @property
    def server_cpu_ms_per_request(self) -> float:
        return self.server_cpu / self.requests * 1000

    @property
    def client_cpu_percent(self) -> float:
        return self.client_cpu / self.seconds * 100


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients [16]")
    parser.add_argument(
        "--requests", type=int, default=10_000, help="timed requests per server [10000]"
    )
    parser.add_argument(
        "--warmup", type=int, default=200, help="requests sent first, not counted [200]"
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=60.0,
        help="stop sending after this many seconds of a timed phase [60]",
    )
    options = parser.parse_args(argv)
    if options.clients < 1 or options.requests < 1 or options.warmup < 0:
        parser.error("--clients and --requests must be at least 1, --warmup at least 0")
    return options


def start_server(name: str, command: list[str], directory: Path) -> tuple[WorkerProcess, str]:
    """Start a server command and return it with the URL it logs once its socket listens."""
    env = {key: value for key, value in os.environ.items() if key != "SLUICEGATE_API_TOKENS"}
    process = WorkerProcess(command, env, directory, directory / f"{name}.log")
    found: list[str] = []

    def logged_url() -> bool:
        match = URL_PATTERN.search(process.log_path.read_text(errors="replace"))
        if match:
            found.append(match.group(1))
        return match is not None

    try:
        wait_for(logged_url, SERVER_START_TIMEOUT_S, 0.05, f"{name} to listen", process)
    except BaseException:
        process.stop()
        raise
    return process, found[0]


async def send_requests(base_url: str, clients: int, count: int, max_seconds: float) -> Phase:
    """Post ``count`` enqueue requests from ``clients`` connections; stop after ``max_seconds``."""
    phase = Phase(server=base_url)
    path = f"/v1/queues/{QUEUE}/jobs"
    headers = {"Content-Type": "application/json"}
    sent = 0
    deadline = time.perf_counter() + max_seconds

    async def run_client(client: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < count and time.perf_counter() < deadline:
            body = orjson.dumps({"task": TASK, "args": [sent]})
            sent += 1
            started = time.perf_counter()
            response = await client.post(path, content=body, headers=headers)
            phase.latencies.append(time.perf_counter() - started)
            phase.statuses[response.status_code] += 1

    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    connections = [
        httpx.AsyncClient(base_url=base_url, limits=limits, timeout=REQUEST_TIMEOUT_S)
        for _ in range(clients)
    ]
    try:
        started = time.perf_counter()
        cpu_started = time.process_time()
        await asyncio.gather(*(run_client(client) for client in connections))
        phase.client_cpu = time.process_time() - cpu_started
        phase.seconds = time.perf_counter() - started
    finally:
        for client in connections:
            await client.aclose()
    return phase


def measure(name: str, server: WorkerProcess, url: str, options: argparse.Namespace) -> Phase:
    warmup = asyncio.run(send_requests(url, options.clients, options.warmup, options.max_seconds))
    check_statuses(name, warmup)
    cpu_before = sum(server.cpu_seconds().values())
    phase = asyncio.run(send_requests(url, options.clients, options.requests, options.max_seconds))
    phase.server_cpu = sum(server.cpu_seconds().values()) - cpu_before
    phase.server = name
    check_statuses(name, phase)
    phase.statuses.update(warmup.statuses)
    return phase


def check_statuses(name: str, phase: Phase) -> None:
    if set(phase.statuses) != {202}:
        raise RuntimeError(f"{name}: expected only 202 responses, got {dict(phase.statuses)}")


def check_queue_length(url: str, expected: int) -> None:
    """Raise RuntimeError unless queue ``bench`` contains ``expected`` messages."""
    app = sluicegate.App(url)
    try:
        stats = {entry.name: entry for entry in app.backend.stats()}
    finally:
        app.close()
    found = stats[QUEUE].ready if QUEUE in stats else 0
    if found != expected:
        raise RuntimeError(f"sluicegate: queue {QUEUE!r} has {found} jobs, expected {expected}")


def run_sluicegate(root: Path, options: argparse.Namespace) -> Phase:
    directory = root / "sluicegate"
    directory.mkdir()
    database = directory / "bench.db"
    url = f"sqlite:///{database}"
    (directory / f"{APP_MODULE}.py").write_text(APP_SOURCE.format(url=url, queue=QUEUE))
    command = [str(console_script("sluicegate")), "--log-level", "warning", "serve"]
    command += [f"{APP_MODULE}:app", "--port", "0"]
    server, base_url = start_server("sluicegate", command, directory)
    try:
        phase = measure("sluicegate", server, base_url, options)
    finally:
        server.stop()
    try:
        check_queue_length(url, phase.statuses.total())
    finally:
        wake_directory = channel_dir(str(database))
        for path in (wake_directory, wake_directory + "-results"):
            shutil.rmtree(path, ignore_errors=True)
    return phase


def run_baseline(root: Path, options: argparse.Namespace) -> Phase:
    directory = root / "baseline"
    directory.mkdir()
    command = [sys.executable, str(BENCHMARKS_DIR / "http_baseline.py")]
    server, base_url = start_server("baseline", command, directory)
    try:
        return measure("baseline", server, base_url, options)
    finally:
        server.stop()


def print_report(
    phases: list[Phase], options: argparse.Namespace, load_before: tuple[float, ...]
) -> None:
    flags = (
        f"--clients {options.clients} --requests {options.requests} "
        f"--warmup {options.warmup} --max-seconds {options.max_seconds:g}"
    )
    print(f"\nHTTP enqueue, {flags}\n")
    print_table(phases)

    ours, baseline = phases
    print(
        f"\nsluicegate/baseline: requests/s {ours.rate / baseline.rate:.2f}, "
        f"p50 {ours.percentile_ms(0.5) / baseline.percentile_ms(0.5):.2f}, "
        f"p99 {ours.percentile_ms(0.99) / baseline.percentile_ms(0.99):.2f}, "
        f"server CPU per request "
        f"{ours.server_cpu_ms_per_request / baseline.server_cpu_ms_per_request:.2f}"
    )
    print_environment(load_before)


def print_table(phases: list[Phase]) -> None:
    print(
        "| server | requests | seconds | requests/s | p50 (ms) | p99 (ms) "
        "| server CPU per request (ms) | load generator CPU (% of one core) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for phase in phases:
        print(
            f"| {phase.server} | {phase.requests:,} | {phase.seconds:.2f} | {phase.rate:,.0f} "
            f"| {phase.percentile_ms(0.50):.2f} | {phase.percentile_ms(0.99):.2f} "
            f"| {phase.server_cpu_ms_per_request:.3f} | {phase.client_cpu_percent:.0f} |"
        )


def print_environment(load_before: tuple[float, ...]) -> None:
    load_after = os.getloadavg()
    versions = ", ".join(
        f"{package} {importlib.metadata.version(package)}" for package in VERSIONED_PACKAGES
    )
    print(f"\nPython {platform.python_version()}, SQLite {sqlite3.sqlite_version}, {versions}")
    print(f"sluicegate {sluicegate.__version__}, source digest {source_digest()}")
    cpus = len(os.sched_getaffinity(0))
    print(f"CPUs available: {cpus}, {platform.system()} {platform.release()}")
    before = " ".join(f"{value:.2f}" for value in load_before)
    after = " ".join(f"{value:.2f}" for value in load_after)
    print(f"load average (1, 5, 15 min) before: {before}, after: {after}")


def exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Raising SystemExit runs the finally blocks that stop the servers.
    sys.exit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    load_before = os.getloadavg()
    root = Path(tempfile.mkdtemp(prefix="sluicegate-http-bench-"))
    try:
        phases = [run_sluicegate(root, options), run_baseline(root, options)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_report(phases, options, load_before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
