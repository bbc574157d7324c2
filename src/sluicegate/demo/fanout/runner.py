"""Run the fan-out demo end to end: ``sluicegate demo fanout``.

:func:`run_fanout` builds the follower graph in a fresh directory and starts
``sluicegate serve`` and ``sluicegate worker`` for the App in
:mod:`sluicegate.demo.fanout.app`. It runs the load generator while a live
table shows posts, 503s, client retries and the queue depth against its
bound. Once the worker has drained the queue, it checks that every accepted
post is on every follower's timeline exactly once.
"""

from __future__ import annotations

import logging
import random
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from sluicegate.broker import QueueStats
from sluicegate.demo.fanout import social
from sluicegate.demo.fanout.config import (
    APP_SPEC,
    MAX_LENGTH_ENV,
    QUEUE,
    SOCIAL_DB_ENV,
    STORE_ENV,
)
from sluicegate.demo.fanout.graph import GraphSpec, follower_counts, generate_edges
from sluicegate.demo.fanout.load import CountingTransport, LoadGenerator, LoadSnapshot, RateStep
from sluicegate.demo.fanout.processes import Service, ServiceError, start_server, start_worker
from sluicegate.demo.signals import stop_signals_as_interrupt
from sluicegate.http.client import Client

logger = logging.getLogger(__name__)

#: The default rising load: posts per second and seconds at each rate, 600 posts in 12 s.
DEFAULT_STEPS = (RateStep(10, 3), RateStep(30, 3), RateStep(60, 3), RateStep(100, 3))

#: Seconds between two refreshes of the live table.
REFRESH_INTERVAL = 0.25

#: Seconds one enqueue may keep retrying 503s before its post counts as not accepted.
CLIENT_MAX_ELAPSED = 20.0

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


@dataclass(frozen=True, slots=True)
class FanoutOptions:
    """The parameters of one run; ``timeout`` bounds the whole run in seconds."""

    users: int = 10_000
    seed: int = 7
    batch_size: int = 200
    max_length: int = 500
    steps: Sequence[RateStep] = DEFAULT_STEPS
    concurrency: int = 4
    posters: int = 32
    timeout: float = 60.0
    directory: Path | None = None


class Deadline:
    """A point in time ``seconds`` from now, by the monotonic clock."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self._end - time.monotonic()


class RunTimeout(Exception):
    """The run did not finish within its ``timeout``."""


def run_fanout(options: FanoutOptions) -> int:
    """Run the demo and return the exit code: 0 only if the exactly-once check passes.

    Returns 1 when the check fails, a process dies or the time runs out, and
    130 when interrupted by Ctrl-C or SIGTERM. The directory with the
    databases and logs is kept for inspection.
    """
    console = Console()
    errors = Console(stderr=True)
    # httpx logs every request at INFO, which would bury the live table.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    directory = options.directory or Path(tempfile.mkdtemp(prefix="sluicegate-fanout-"))
    directory.mkdir(parents=True, exist_ok=True)
    store_path = directory / "sluicegate.db"
    social_path = directory / "social.db"
    if store_path.exists() or social_path.exists():
        errors.print(f"error: {directory} holds an earlier run; pass a new directory", markup=False)
        return EXIT_FAILED
    started = time.monotonic()
    deadline = Deadline(options.timeout)
    edges = _build_graph(console, social_path, options)
    env = {
        STORE_ENV: str(store_path),
        SOCIAL_DB_ENV: str(social_path),
        MAX_LENGTH_ENV: str(options.max_length),
    }
    services: list[Service] = []
    code = EXIT_FAILED
    try:
        with stop_signals_as_interrupt():
            server, url = start_server(APP_SPEC, directory / "server.log", env)
            services.append(server)
            services.append(
                start_worker(APP_SPEC, options.concurrency, directory / "worker.log", env)
            )
            console.print(f"server {url} (pid {server.pid}), worker pid {services[1].pid}")
            code = _run_load(console, url, social_path, services, options, deadline)
    except KeyboardInterrupt:
        errors.print("interrupted: stopping the server and the worker")
        code = EXIT_INTERRUPTED
    except (ServiceError, RunTimeout) as exc:
        errors.print(f"error: {exc}", markup=False)
        for service in services:
            errors.print(service.log_tail(), markup=False)
        code = EXIT_FAILED
    finally:
        for service in reversed(services):
            service.stop()
    console.print(
        f"graph: {options.users} users, {edges} follows; run took "
        f"{time.monotonic() - started:.1f} s; files in {directory}",
        markup=False,
    )
    return code


def _build_graph(console: Console, social_path: Path, options: FanoutOptions) -> int:
    spec = GraphSpec(options.users, options.seed)
    counts = follower_counts(spec)
    conn = social.connect(social_path)
    try:
        social.write_follows(conn, generate_edges(spec))
    finally:
        conn.close()
    console.print(
        f"follower graph: {options.users} users, {sum(counts)} follows, "
        f"median {sorted(counts)[len(counts) // 2]} and max {max(counts)} followers (seed "
        f"{options.seed})",
        markup=False,
    )
    return sum(counts)


def _run_load(
    console: Console,
    url: str,
    social_path: Path,
    services: Sequence[Service],
    options: FanoutOptions,
    deadline: Deadline,
) -> int:
    transport = CountingTransport()
    client = Client(url, transport=transport, max_elapsed=CLIENT_MAX_ELAPSED)
    monitor = social.connect(social_path)
    load = LoadGenerator(
        client,
        transport,
        social_path,
        choose_authors(follower_counts(GraphSpec(options.users, options.seed)), options),
        options.steps,
        batch_size=options.batch_size,
        posters=options.posters,
        drain_timeout=max(1.0, deadline.remaining() / 2),
    )
    thread = threading.Thread(target=load.run, name="load-generator", daemon=True)
    peak = 0
    try:
        thread.start()
        with Live(console=console, auto_refresh=False) as live:
            while True:
                # Read liveness before the depth, so a job enqueued in between is not missed.
                loading = thread.is_alive()
                stats = client.queue(QUEUE)
                depth = _depth(stats)
                peak = max(peak, depth)
                snapshot = load.snapshot()
                entries = social.timeline_entries(monitor)
                live.update(_table(snapshot, stats, entries, options), refresh=True)
                if not loading and depth == 0:
                    break
                for service in services:
                    service.check_alive()
                if deadline.remaining() <= 0:
                    raise RunTimeout(
                        f"timed out after {deadline.seconds:g} s with {depth} jobs in the queue"
                    )
                time.sleep(REFRESH_INTERVAL)
        dead = stats.dead
        snapshot = load.snapshot()
        result = social.verify(monitor)
    finally:
        load.stop()
        thread.join(CLIENT_MAX_ELAPSED + 5)
        client.close()
        monitor.close()
    _print_summary(console, snapshot, result, peak, dead, options)
    return EXIT_OK if result.passed and dead == 0 else EXIT_FAILED


def choose_authors(counts: Sequence[int], options: FanoutOptions) -> list[int]:
    """Draw the author of each post with probability proportional to followers plus one.

    Accounts with many followers dominate the fan-out work, as they do on real
    social networks, so the heavy tail of the graph shows in the queue.
    """
    posts = sum(step.posts for step in options.steps)
    rng = random.Random(options.seed + 2)
    return rng.choices(range(len(counts)), weights=[count + 1 for count in counts], k=posts)


def _depth(stats: QueueStats) -> int:
    """Return the messages that count against ``max_length``: ready, delayed and reserved."""
    return stats.ready + stats.delayed + stats.running


def _table(
    snapshot: LoadSnapshot, stats: QueueStats, entries: int, options: FanoutOptions
) -> Group:
    table = Table(title="sluicegate fan-out", show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("rate step", f"{snapshot.step}/{len(options.steps)}: {snapshot.rate:g} posts/s")
    table.add_row("posts offered", str(snapshot.offered))
    table.add_row("posts accepted", str(snapshot.accepted))
    table.add_row("posts not accepted", str(snapshot.failed))
    table.add_row("delivery jobs enqueued", str(snapshot.jobs))
    table.add_row("503s answered", str(snapshot.rejected_503))
    table.add_row("client retries", str(snapshot.retries))
    table.add_row("timeline entries", str(entries))
    bound = stats.max_length or options.max_length
    depth = _depth(stats)
    table.add_row("queue depth / bound", f"{depth} / {bound}")
    bar = ProgressBar(total=bound, completed=min(depth, bound), width=40)
    return Group(table, bar)


def _print_summary(
    console: Console,
    snapshot: LoadSnapshot,
    result: social.Verification,
    peak: int,
    dead: int,
    options: FanoutOptions,
) -> None:
    lines = [
        f"posts offered {snapshot.offered}, accepted {result.accepted_posts}, "
        f"not accepted {result.unaccepted_posts}",
        f"delivery jobs {snapshot.jobs} of up to {options.batch_size} followers, "
        f"dead letters {dead}",
        f"503s answered {snapshot.rejected_503}, client retries {snapshot.retries}, "
        f"peak queue depth {peak} of {options.max_length}",
        f"timeline entries {result.entries}, expected {result.expected}, "
        f"missing {result.missing}, unexpected {result.unexpected}, "
        f"duplicates {result.duplicates}",
    ]
    console.print()
    for line in lines:
        console.print(line, markup=False)
    verdict = "PASS" if result.passed and dead == 0 else "FAIL"
    console.print(f"exactly-once delivery: {verdict}", markup=False)
