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

Every request posts `{"task": "http_bench_app.noop", "args": [i]}`. Each server gets three
phases in turn:

1. warm-up: --warmup requests in a closed loop, not counted;
2. closed loop: --clients asyncio tasks in this process, each with its own
   `httpx.AsyncClient` holding one keep-alive connection, post one request after another
   until --requests requests are sent or --max-seconds have passed;
3. open loop: request i is sent at i / rate seconds from the start of the phase, whether
   or not earlier requests have finished, on up to 64 keep-alive connections. The rate is
   --rate, or by default half the requests/s that sluicegate reached in its closed loop
   of the same run; both servers get the same rate. The phase sends rate x --open-seconds
   requests, and stops sending after --max-seconds. It uses the small client in
   `bench_http_client.py`, because httpx costs about 1 ms of CPU per request here and fell
   behind its schedule at a few hundred requests/s.

For each timed phase it reports:

- requests/s: requests completed in the phase over its wall time, which ends with the
  last response;
- p50 and p99 latency, per request. In the closed loop it runs from just before
  `client.post` to the parsed response. In the open loop it runs from the time the
  request was due to be sent, so a late send by this process adds to the latency instead
  of lowering the load;
- server CPU per request: user plus system CPU time of the server process over the phase,
  divided by its requests;
- load generator CPU: this process's CPU time over the phase, as % of one core. A figure
  near 100% means the generator, not the server, set the rate of a closed loop, or sent
  the open loop late.

Every response must be 202, or the script exits with an error. After the sluicegate run,
its queue must contain exactly one job per request sent, warm-up included.

`--profile FILE` runs the sluicegate server under cProfile, timing the CPU time of every
thread, and writes the merged statistics to FILE when the server stops (read them with
`python -m pstats FILE`). The profiler slows the server several times over, so the figures
of such a run do not compare with others.

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
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import orjson
from bench_common import console_script
from bench_http_client import KeepAliveClient
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

#: Keep-alive connections the open-loop phase may open to one server.
OPEN_LOOP_CONNECTIONS = 64

#: The environment variable that makes the benchmark app profile the sluicegate server.
PROFILE_VARIABLE = "SLUICEGATE_BENCH_PROFILE"

APP_SOURCE = """\
import os

import sluicegate

app = sluicegate.App({url!r})
app.queue({queue!r}, max_length=10_000_000)


@app.task(queue={queue!r})
def noop(i: int) -> None:
    pass


if os.environ.get({profile_variable!r}):
    import cProfile
    import pstats
    import signal
    import threading
    import time

    # Each profiler times its own thread's CPU, so a thread blocked on a lock, a
    # socket or an fsync adds nothing.
    profilers = [cProfile.Profile(time.thread_time)]

    def profile_new_thread(*event):
        # The first profiling event of each thread started from now on lands here;
        # enabling a profiler replaces this hook in that thread.
        profiler = cProfile.Profile(time.thread_time)
        profilers.append(profiler)
        profiler.enable()

    def write_profile_and_stop(signum, frame):
        # uvicorn restores this handler when it has shut down and raises SIGTERM
        # again, which ends the process without running atexit functions.
        merged = pstats.Stats(profilers[0])
        for profiler in profilers[1:]:
            merged.add(profiler)
        merged.dump_stats(os.environ[{profile_variable!r}])
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)

    threading.setprofile(profile_new_thread)
    profilers[0].enable()
    signal.signal(signal.SIGTERM, write_profile_and_stop)
"""

VERSIONED_PACKAGES = ("uvicorn", "h11", "starlette", "fastapi", "pydantic", "httpx", "orjson")

#: Optional packages that uvicorn uses when they are installed.
OPTIONAL_PACKAGES = ("uvloop", "httptools")


@dataclass
class Phase:
    """Measurements of one timed phase against one server. Times are in seconds.

    ``target_rate`` is the send rate of an open-loop phase, in requests/s, and None for a
    closed-loop phase.
    """

    server: str
    target_rate: float | None = None
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


@dataclass
class ServerRun:
    """The timed phases of one server: a closed loop, then an open loop."""

    closed: Phase
    open: Phase


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients [16]")
    parser.add_argument(
        "--requests", type=int, default=10_000, help="closed-loop requests per server [10000]"
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
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="open-loop send rate in requests/s [half of sluicegate's closed-loop rate]",
    )
    parser.add_argument(
        "--open-seconds",
        type=float,
        default=10.0,
        help="length of the open-loop phase in seconds; it sends rate x this requests [10]",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="FILE",
        help="profile the sluicegate server with cProfile and write the statistics to FILE",
    )
    options = parser.parse_args(argv)

    if options.clients < 1 or options.requests < 1 or options.warmup < 0:
        parser.error("--clients and --requests must be at least 1, --warmup at least 0")
    if options.rate is not None and options.rate <= 0:
        parser.error("--rate must be above 0")
    if options.open_seconds <= 0:
        parser.error("--open-seconds must be above 0")
    return options


def start_server(
    name: str, command: list[str], directory: Path, extra_env: dict[str, str] | None = None
) -> tuple[WorkerProcess, str]:
    """Start a server command and return it with the URL it logs once its socket listens."""
    env = {key: value for key, value in os.environ.items() if key != "SLUICEGATE_API_TOKENS"}
    env.pop(PROFILE_VARIABLE, None)
    env.update(extra_env or {})
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


async def send_closed_loop(base_url: str, clients: int, count: int, max_seconds: float) -> Phase:
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


async def send_open_loop(base_url: str, rate: float, count: int, max_seconds: float) -> Phase:
    """Post request i at ``i / rate`` seconds, for ``count`` requests or ``max_seconds``.

    Each latency counts from the time its request was due, not from when it was sent.
    """
    phase = Phase(server=base_url, target_rate=rate)
    path = f"/v1/queues/{QUEUE}/jobs"
    client = KeepAliveClient(base_url, OPEN_LOOP_CONNECTIONS, REQUEST_TIMEOUT_S)

    async def post(index: int, due: float) -> None:
        status = await client.post_json(path, orjson.dumps({"task": TASK, "args": [index]}))
        phase.latencies.append(time.perf_counter() - due)
        phase.statuses[status] += 1

    try:
        requests: list[asyncio.Task[None]] = []
        started = time.perf_counter()
        cpu_started = time.process_time()
        for index in range(count):
            due = started + index / rate
            if due - started >= max_seconds:
                break
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            requests.append(asyncio.create_task(post(index, due)))
        await asyncio.gather(*requests)
        phase.client_cpu = time.process_time() - cpu_started
        phase.seconds = time.perf_counter() - started
    finally:
        await client.aclose()
    return phase


def measure(
    name: str, server: WorkerProcess, url: str, options: argparse.Namespace, rate: float | None
) -> ServerRun:
    """Run the warm-up, closed-loop and open-loop phases against one server.

    ``rate`` is the open-loop rate; None means half the closed loop's requests/s.
    """
    warmup = asyncio.run(
        send_closed_loop(url, options.clients, options.warmup, options.max_seconds)
    )
    check_statuses(name, warmup)
    closed = timed_phase(
        name,
        server,
        send_closed_loop(url, options.clients, options.requests, options.max_seconds),
    )
    closed.statuses.update(warmup.statuses)
    open_rate = closed.rate / 2 if rate is None else rate
    count = max(1, round(open_rate * options.open_seconds))
    opened = timed_phase(name, server, send_open_loop(url, open_rate, count, options.max_seconds))
    return ServerRun(closed, opened)


def timed_phase(name: str, server: WorkerProcess, requests: Coroutine[Any, Any, Phase]) -> Phase:
    """Run ``requests`` and return its phase with the server's CPU time over it."""
    cpu_before = sum(server.cpu_seconds().values())
    phase = asyncio.run(requests)
    phase.server_cpu = sum(server.cpu_seconds().values()) - cpu_before
    phase.server = name
    check_statuses(name, phase)
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


def run_sluicegate(root: Path, options: argparse.Namespace) -> ServerRun:
    directory = root / "sluicegate"
    directory.mkdir()
    database = directory / "bench.db"
    url = f"sqlite:///{database}"
    source = APP_SOURCE.format(url=url, queue=QUEUE, profile_variable=PROFILE_VARIABLE)
    (directory / f"{APP_MODULE}.py").write_text(source)
    command = [str(console_script("sluicegate")), "--log-level", "warning", "serve"]
    command += [f"{APP_MODULE}:app", "--port", "0"]
    profile_env = {}
    if options.profile is not None:
        profile_env[PROFILE_VARIABLE] = str(options.profile.resolve())
    server, base_url = start_server("sluicegate", command, directory, profile_env)
    try:
        run = measure("sluicegate", server, base_url, options, options.rate)
    finally:
        server.stop()
    try:
        check_queue_length(url, run.closed.statuses.total() + run.open.statuses.total())
    finally:
        wake_directory = channel_dir(str(database))
        for path in (wake_directory, wake_directory + "-results"):
            shutil.rmtree(path, ignore_errors=True)
    return run


def run_baseline(root: Path, options: argparse.Namespace, rate: float) -> ServerRun:
    directory = root / "baseline"
    directory.mkdir()
    command = [sys.executable, str(BENCHMARKS_DIR / "http_baseline.py")]
    server, base_url = start_server("baseline", command, directory)
    try:
        return measure("baseline", server, base_url, options, rate)
    finally:
        server.stop()


def print_report(
    runs: list[ServerRun], options: argparse.Namespace, load_before: tuple[float, ...]
) -> None:
    flags = (
        f"--clients {options.clients} --requests {options.requests} "
        f"--warmup {options.warmup} --max-seconds {options.max_seconds:g} "
        f"--open-seconds {options.open_seconds:g}"
    )
    if options.rate is not None:
        flags += f" --rate {options.rate:g}"
    print(f"\nHTTP enqueue, {flags}")
    if options.profile is not None:
        print(f"sluicegate ran under cProfile ({options.profile}): its figures are slowed")

    print(f"\nClosed loop, {options.clients} clients:\n")
    print_closed_table([run.closed for run in runs])
    print_ratios(runs[0].closed, runs[1].closed)

    rate = runs[0].open.target_rate or 0.0
    origin = "--rate" if options.rate is not None else "half of sluicegate's closed-loop rate"
    print(f"\nOpen loop at {rate:,.0f} requests/s ({origin}):\n")
    print_open_table([run.open for run in runs])
    print_ratios(runs[0].open, runs[1].open)
    print_environment(load_before)


def print_closed_table(phases: list[Phase]) -> None:
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


def print_open_table(phases: list[Phase]) -> None:
    print(
        "| server | requests | seconds | target requests/s | achieved requests/s | p50 (ms) "
        "| p99 (ms) | max (ms) | server CPU per request (ms) "
        "| load generator CPU (% of one core) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for phase in phases:
        print(
            f"| {phase.server} | {phase.requests:,} | {phase.seconds:.2f} "
            f"| {phase.target_rate or 0.0:,.0f} | {phase.rate:,.0f} "
            f"| {phase.percentile_ms(0.50):.2f} | {phase.percentile_ms(0.99):.2f} "
            f"| {phase.percentile_ms(1.0):.2f} | {phase.server_cpu_ms_per_request:.3f} "
            f"| {phase.client_cpu_percent:.0f} |"
        )


def print_ratios(ours: Phase, baseline: Phase) -> None:
    print(
        f"\nsluicegate/baseline: requests/s {ours.rate / baseline.rate:.2f}, "
        f"p50 {ours.percentile_ms(0.5) / baseline.percentile_ms(0.5):.2f}, "
        f"p99 {ours.percentile_ms(0.99) / baseline.percentile_ms(0.99):.2f}, "
        f"server CPU per request "
        f"{ours.server_cpu_ms_per_request / baseline.server_cpu_ms_per_request:.2f}"
    )


def print_environment(load_before: tuple[float, ...]) -> None:
    load_after = os.getloadavg()
    versions = ", ".join(
        f"{package} {importlib.metadata.version(package)}" for package in VERSIONED_PACKAGES
    )
    print(f"\nPython {platform.python_version()}, SQLite {sqlite3.sqlite_version}, {versions}")
    print(f"optional packages: {', '.join(optional_versions())}")
    print(f"sluicegate {sluicegate.__version__}, source digest {source_digest()}")
    cpus = len(os.sched_getaffinity(0))
    print(f"CPUs available: {cpus}, {platform.system()} {platform.release()}")
    before = " ".join(f"{value:.2f}" for value in load_before)
    after = " ".join(f"{value:.2f}" for value in load_after)
    print(f"load average (1, 5, 15 min) before: {before}, after: {after}")


def optional_versions() -> list[str]:
    found = []
    for package in OPTIONAL_PACKAGES:
        try:
            found.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{package} not installed")
    return found


def exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Raising SystemExit runs the finally blocks that stop the servers.
    sys.exit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    load_before = os.getloadavg()
    root = Path(tempfile.mkdtemp(prefix="sluicegate-http-bench-"))
    try:
        ours = run_sluicegate(root, options)
        rate = ours.open.target_rate or ours.closed.rate / 2
        runs = [ours, run_baseline(root, options, rate)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_report(runs, options, load_before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
