"""Benchmark sluicegate on its SQLite store against huey's SqliteHuey in one run.

Run it as `.venv/bin/python benchmarks/sqlite_vs_huey.py` (`make bench` does exactly that);
`--jobs 2000 --idle-seconds 5` gives a quick run. For each library it measures:

1. one-by-one durable enqueue of --jobs jobs with no worker running, in jobs/s. Each of the
   --repeat runs uses a new database, and the median is reported. This phase runs first,
   alternating between the libraries run by run, so that a disk whose fsync latency drifts
   over minutes weighs on both alike. The user and system CPU time of this process per
   enqueue is reported beside it (medians over the runs); the rest of each enqueue's time
   is the wait for fdatasync;
2. bulk enqueue of --jobs jobs in batches of --bulk-batch, in jobs/s, as the median of --repeat
   runs. huey has no bulk API, so its column shows its one-by-one rate for reference;
3. drain of --drain-jobs no-op jobs through one worker process: the queue is filled first, the
   worker command is spawned, and the rate is jobs divided by the time from spawn to the first
   poll that finds every job finished. The poll runs every 50 ms, so the drain time is late by
   at most 50 ms plus one query;
4. --round-trips sequential round trips (enqueue, then block until the result arrives) against a
   running worker, after --warmup round trips that are not counted: p50 and p99 in ms;
5. the worker's peak RSS during the drain, summed over the worker's process tree and sampled
   every 100 ms;
6. the CPU time an idle worker uses in --idle-seconds, summed over its process tree and given as
   % of one core. It is measured on the round-trip worker, starting 1 s after its last job.
   Linux counts CPU time in 10 ms ticks, so over 30 s the resolution is 0.033% of a core.

Each phase of each library uses a new database file in a new temporary directory. The parent
closes its own library connections before a drain, so only the worker writes to the file.

huey.storage imports the redis and psycopg drivers whenever they are installed, and `make bench`
installs both for sluicegate's other backends. SqliteHuey uses neither, and together they
added about 23 MiB to the RSS of `import huey.bin.huey_consumer` (see BENCHMARKS.md).
So by default the huey worker starts with those two imports blocked (see --huey-drivers).

Completion during the drain is read through a separate read-only SQLite connection:
- huey: `select count(*) from kv where queue = ?`. Each no-op task stores its result as one
  row of huey's kv table when it finishes, and nothing reads the results during the drain.
- sluicegate: `select length from queues where name = ?`, one primary-key lookup. The prefill
  uses enqueue_many, which counts its jobs exactly (only one-by-one enqueues claim blocks of
  slots ahead), and triggers keep that column equal to the queue's ready, delayed and reserved
  messages. The worker deletes a message in the transaction that records its job's outcome,
  so the finished count is the prefilled count minus the length.
After a drain, each library's records are checked: every job must have succeeded.

Every worker started here is stopped by pid at the end of its phase: SIGTERM to the worker and
its children, then SIGKILL to any still running after 10 s.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from bench_common import QueueAdapter, StorageSettings
from bench_huey import HueyAdapter
from bench_procs import PeakRssSampler, WorkerProcess, wait_for, worker_env

DRAIN_POLL_INTERVAL_S = 0.05
RSS_SAMPLE_INTERVAL_S = 0.1
UNTIMED_ENQUEUES = 10
IDLE_SETTLE_S = 1.0
WORKER_START_TIMEOUT_S = 60.0

BULK_TARGET_JOBS_PER_S = 50_000
ROUND_TRIP_P50_TARGET_MS = 5.0
IDLE_CPU_TARGET_PERCENT = 1.0
DRAIN_TARGET_RATIO = 2.0


@dataclass
class Figures:
    """Measured figures of one library. A figure is None when its phase did not run."""

    name: str
    version: str
    storage: StorageSettings | None = None
    worker: str = ""
    enqueue_one_rates: list[float] = field(default_factory=list)
    enqueue_one_cpu_us: list[tuple[float, float]] = field(default_factory=list)  # user, system
    enqueue_bulk_rates: list[float] = field(default_factory=list)
    drain_per_s: float | None = None
    drain_seconds: float | None = None
    peak_rss_bytes: int | None = None
    rss_samples: int = 0
    round_trip_ms: list[float] = field(default_factory=list)
    idle_cpu_percent: float | None = None

    @property
    def enqueue_one_per_s(self) -> float | None:
        return statistics.median(self.enqueue_one_rates) if self.enqueue_one_rates else None

    @property
    def enqueue_bulk_per_s(self) -> float | None:
        return statistics.median(self.enqueue_bulk_rates) if self.enqueue_bulk_rates else None

    def round_trip_percentile(self, percent: int) -> float | None:
        if len(self.round_trip_ms) < 2:
            return None
        cut_points = statistics.quantiles(self.round_trip_ms, n=100, method="inclusive")
        return cut_points[percent - 1]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class EnqueueRun:
    """One run of the one-by-one enqueue: its rate and this process's CPU per enqueue."""

    rate: float
    user_us: float
    system_us: float


def measure_enqueue_one(adapter: QueueAdapter, directory: Path, jobs: int) -> EnqueueRun:
    adapter.open(directory)
    try:
        for i in range(UNTIMED_ENQUEUES):
            adapter.enqueue_one(i)
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        for i in range(jobs):
            adapter.enqueue_one(i)
        elapsed = time.perf_counter() - start
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        adapter.close()
    return EnqueueRun(
        rate=jobs / elapsed,
        user_us=(cpu_after.ru_utime - cpu_before.ru_utime) / jobs * 1e6,
        system_us=(cpu_after.ru_stime - cpu_before.ru_stime) / jobs * 1e6,
    )


def measure_enqueue_bulk(adapter: QueueAdapter, directory: Path, jobs: int, batch: int) -> float:
    batches = [list(range(start, min(start + batch, jobs))) for start in range(0, jobs, batch)]
    adapter.open(directory)
    try:
        adapter.enqueue_bulk(list(range(UNTIMED_ENQUEUES)))
        start = time.perf_counter()
        for numbers in batches:
            adapter.enqueue_bulk(numbers)
        elapsed = time.perf_counter() - start
    finally:
        adapter.close()
    return jobs / elapsed


def start_worker(adapter: QueueAdapter, directory: Path) -> WorkerProcess:
    return WorkerProcess(
        adapter.worker_command(),
        env=worker_env(directory),
        cwd=directory,
        log_path=directory / "worker.log",
    )


def measure_drain(
    adapter: QueueAdapter, directory: Path, jobs: int, timeout: float, figures: Figures
) -> None:
    adapter.open(directory)
    try:
        adapter.prefill(jobs)
        adapter.close()
        already_done = adapter.completed_count()
        if already_done != 0:
            raise RuntimeError(f"{already_done} jobs finished before the worker started")
        worker = start_worker(adapter, directory)
        try:
            with PeakRssSampler(worker, RSS_SAMPLE_INTERVAL_S) as sampler:
                finished_at = wait_for(
                    lambda: adapter.completed_count() >= jobs,
                    timeout=timeout,
                    interval=DRAIN_POLL_INTERVAL_S,
                    description=f"{adapter.name} to finish {jobs} jobs",
                    worker=worker,
                )
            adapter.verify_drained(jobs)
        finally:
            worker.stop()
    finally:
        adapter.close()
    figures.drain_seconds = finished_at - worker.started_at
    figures.drain_per_s = jobs / figures.drain_seconds
    figures.peak_rss_bytes = sampler.peak_bytes
    figures.rss_samples = sampler.samples


def run_round_trip(adapter: QueueAdapter, i: int, timeout: float, worker: WorkerProcess) -> None:
    """Run one round trip, and report a dead worker in place of the library's timeout error."""
    try:
        adapter.round_trip(i, timeout)
    except Exception:
        worker.check_running()
        raise


def measure_round_trips_and_idle(
    adapter: QueueAdapter,
    directory: Path,
    options: argparse.Namespace,
    figures: Figures,
) -> None:
    adapter.open(directory)
    try:
        worker = start_worker(adapter, directory)
        try:
            # The first warm-up round trip also waits for the worker to start.
            run_round_trip(adapter, 0, WORKER_START_TIMEOUT_S, worker)
            for i in range(1, options.warmup):
                run_round_trip(adapter, i, options.timeout, worker)
            for i in range(options.round_trips):
                start = time.perf_counter()
                run_round_trip(adapter, i, options.timeout, worker)
                figures.round_trip_ms.append((time.perf_counter() - start) * 1000.0)

            time.sleep(IDLE_SETTLE_S)
            worker.check_running()
            before = worker.cpu_seconds()
            start = time.perf_counter()
            time.sleep(options.idle_seconds)
            after = worker.cpu_seconds()
            elapsed = time.perf_counter() - start
            worker.check_running()
        finally:
            worker.stop()
    finally:
        adapter.close()
    # A process that started during the window counts with all of its CPU time.
    busy = sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())
    figures.idle_cpu_percent = busy / elapsed * 100.0


def phase_directory(root: Path, library: str, phase: str) -> Path:
    """Return a new directory, and so a new database file, for one phase of one library."""
    path = root / library / phase
    path.mkdir(parents=True)
    return path


def measure_enqueue_one_alternating(
    adapters: list[QueueAdapter], root: Path, options: argparse.Namespace
) -> dict[str, list[EnqueueRun]]:
    """Run the one-by-one enqueue --repeat times per library, alternating libraries."""
    names = ", ".join(adapter.name for adapter in adapters)
    log(f"{names}: enqueue {options.jobs} jobs one by one, {options.repeat} times, alternating")
    runs: dict[str, list[EnqueueRun]] = {adapter.name: [] for adapter in adapters}
    for run in range(options.repeat):
        for adapter in adapters:
            directory = phase_directory(root, adapter.name, f"enqueue-one-{run}")
            runs[adapter.name].append(measure_enqueue_one(adapter, directory, options.jobs))
    return runs


def measure(
    adapter: QueueAdapter, root: Path, options: argparse.Namespace, figures: Figures
) -> None:
    """Measure every phase but the one-by-one enqueue into ``figures``."""

    def phase(name: str) -> Path:
        return phase_directory(root, adapter.name, name)

    adapter.open(phase("describe"))
    try:
        figures.storage = adapter.storage_settings()
        figures.worker = adapter.describe_worker()
    finally:
        adapter.close()

    if adapter.has_bulk_enqueue:
        log(
            f"{adapter.name}: enqueue {options.jobs} jobs in batches of {options.bulk_batch}, "
            f"{options.repeat} times"
        )
        for run in range(options.repeat):
            rate = measure_enqueue_bulk(
                adapter, phase(f"enqueue-bulk-{run}"), options.jobs, options.bulk_batch
            )
            figures.enqueue_bulk_rates.append(rate)

    log(f"{adapter.name}: drain {options.drain_jobs} jobs through one worker")
    measure_drain(adapter, phase("drain"), options.drain_jobs, options.timeout, figures)

    log(
        f"{adapter.name}: {options.round_trips} round trips after {options.warmup} warm-up, "
        f"then {options.idle_seconds:g} s idle"
    )
    measure_round_trips_and_idle(adapter, phase("round-trip"), options, figures)


def make_adapter(name: str, options: argparse.Namespace) -> QueueAdapter:
    if name == "huey":
        return HueyAdapter(block_drivers=options.huey_drivers == "blocked")
    from bench_sluicegate import SluicegateAdapter

    return SluicegateAdapter()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe_machine(root: Path, load_before: tuple[float, float, float]) -> list[str]:
    load_after = os.getloadavg()
    return [
        f"CPUs available: {len(platform_cpus())}, model: {cpu_model()}",
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"{platform.system()} {platform.release()}",
        f"temporary directories under {root}",
        f"load average (1, 5, 15 min) before: {format_load(load_before)}, "
        f"after: {format_load(load_after)}",
    ]


def format_load(load: tuple[float, float, float]) -> str:
    return " ".join(f"{value:.2f}" for value in load)


def platform_cpus() -> set[int]:
    if hasattr(os, "sched_getaffinity"):
        return os.sched_getaffinity(0)
    return set(range(os.cpu_count() or 1))


def format_number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def format_rates(rates: list[float]) -> str:
    return ", ".join(format_number(rate) for rate in rates)


def format_ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or theirs == 0:
        return "-"
    return f"{ours / theirs:.2f}"


def check(condition: bool | None) -> str:
    if condition is None:
        return "-"
    return "yes" if condition else "no"


def ratio_at_least(ours: float | None, theirs: float | None, minimum: float) -> bool | None:
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs >= minimum


def below(value: float | None, limit: float) -> bool | None:
    return None if value is None else value < limit


def report_rows(ours: Figures, theirs: Figures) -> list[list[str]]:
    """Build the table rows: metric, sluicegate, huey, ratio, target, target met."""
    mib = 1024 * 1024
    our_rss = None if ours.peak_rss_bytes is None else ours.peak_rss_bytes / mib
    their_rss = None if theirs.peak_rss_bytes is None else theirs.peak_rss_bytes / mib
    our_p50 = ours.round_trip_percentile(50)
    their_p50 = theirs.round_trip_percentile(50)
    our_p99 = ours.round_trip_percentile(99)
    their_p99 = theirs.round_trip_percentile(99)
    if theirs.enqueue_bulk_per_s is None and theirs.enqueue_one_per_s is not None:
        their_bulk = f"no bulk API (one-by-one: {format_number(theirs.enqueue_one_per_s)})"
    else:
        their_bulk = format_number(theirs.enqueue_bulk_per_s)
    bulk_met = (
        None
        if ours.enqueue_bulk_per_s is None
        else ours.enqueue_bulk_per_s >= BULK_TARGET_JOBS_PER_S
    )
    rss_met = None if our_rss is None or their_rss is None else our_rss <= their_rss
    enqueue_met = ratio_at_least(ours.enqueue_one_per_s, theirs.enqueue_one_per_s, 1.0)
    if enqueue_met and ours.storage is not None:
        enqueue_met = ours.storage.durable

    return [
        [
            "one-by-one durable enqueue (jobs/s)",
            format_number(ours.enqueue_one_per_s),
            format_number(theirs.enqueue_one_per_s),
            format_ratio(ours.enqueue_one_per_s, theirs.enqueue_one_per_s),
            ">= huey, every enqueue durable",
            check(enqueue_met),
        ],
        [
            "bulk enqueue (jobs/s)",
            format_number(ours.enqueue_bulk_per_s),
            their_bulk,
            "-",
            f">= {BULK_TARGET_JOBS_PER_S:,} jobs/s",
            check(bulk_met),
        ],
        [
            "drain, one worker process (jobs/s)",
            format_number(ours.drain_per_s),
            format_number(theirs.drain_per_s),
            format_ratio(ours.drain_per_s, theirs.drain_per_s),
            f">= {DRAIN_TARGET_RATIO:g}x huey",
            check(ratio_at_least(ours.drain_per_s, theirs.drain_per_s, DRAIN_TARGET_RATIO)),
        ],
        [
            "round trip p50 (ms)",
            format_number(our_p50, 2),
            format_number(their_p50, 2),
            format_ratio(our_p50, their_p50),
            f"< {ROUND_TRIP_P50_TARGET_MS:g} ms",
            check(below(our_p50, ROUND_TRIP_P50_TARGET_MS)),
        ],
        [
            "round trip p99 (ms)",
            format_number(our_p99, 2),
            format_number(their_p99, 2),
            format_ratio(our_p99, their_p99),
            "-",
            "-",
        ],
        [
            "worker peak RSS while draining (MiB)",
            format_number(our_rss, 1),
            format_number(their_rss, 1),
            format_ratio(our_rss, their_rss),
            "<= huey",
            check(rss_met),
        ],
        [
            "idle worker CPU (% of one core)",
            format_number(ours.idle_cpu_percent, 3),
            format_number(theirs.idle_cpu_percent, 3),
            format_ratio(ours.idle_cpu_percent, theirs.idle_cpu_percent),
            f"< {IDLE_CPU_TARGET_PERCENT:g}%",
            check(below(ours.idle_cpu_percent, IDLE_CPU_TARGET_PERCENT)),
        ],
    ]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [cell.ljust(width) for cell, width in zip(cells, widths, strict=True)]
        return "| " + " | ".join(padded) + " |"

    separator = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(header), separator, *(line(row) for row in rows)])


def print_report(
    results: dict[str, Figures],
    options: argparse.Namespace,
    root: Path,
    load_before: tuple[float, float, float],
) -> None:
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(
        f"jobs={options.jobs} repeat={options.repeat} bulk-batch={options.bulk_batch} "
        f"drain-jobs={options.drain_jobs} "
        f"round-trips={options.round_trips} warmup={options.warmup} "
        f"idle-seconds={options.idle_seconds:g} huey-drivers={options.huey_drivers}"
    )
    for line in describe_machine(root, load_before):
        print(line)
    for figures in results.values():
        print(f"{figures.name} {figures.version}")
        print(f"  storage: {figures.storage}")
        print(f"  worker: {figures.worker}")
        if figures.enqueue_one_rates:
            print(f"  one-by-one enqueue runs (jobs/s): {format_rates(figures.enqueue_one_rates)}")
            user = statistics.median(cpu[0] for cpu in figures.enqueue_one_cpu_us)
            system = statistics.median(cpu[1] for cpu in figures.enqueue_one_cpu_us)
            print(f"  one-by-one enqueue CPU per job (us): user {user:.0f}, system {system:.0f}")
        if figures.enqueue_bulk_rates:
            print(f"  bulk enqueue runs (jobs/s): {format_rates(figures.enqueue_bulk_rates)}")
        if figures.drain_seconds is not None:
            print(
                f"  drain took {figures.drain_seconds:.2f} s from spawn; "
                f"{figures.rss_samples} RSS samples"
            )
    print()

    ours = results.get("sluicegate", Figures("sluicegate", "not run"))
    theirs = results.get("huey", Figures("huey", "not run"))
    header = ["metric", "sluicegate", "huey", "sluicegate/huey", "target", "met"]
    print(markdown_table(header, report_rows(ours, theirs)))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--jobs", type=int, default=5000, help="jobs per enqueue measurement (default 5000)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="runs of each enqueue measurement, each on a new database; the median is "
        "reported (default 5)",
    )
    parser.add_argument(
        "--bulk-batch",
        type=int,
        default=1000,
        help="jobs per bulk enqueue call, each one transaction (default 1000)",
    )
    parser.add_argument(
        "--drain-jobs",
        type=int,
        default=20_000,
        help="no-op jobs in the queue before the drain worker starts (default 20000)",
    )
    parser.add_argument(
        "--round-trips", type=int, default=500, help="timed sequential round trips (default 500)"
    )
    parser.add_argument(
        "--warmup", type=int, default=20, help="untimed round trips before them (default 20)"
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=30.0,
        help="seconds of worker idleness over which CPU use is measured (default 30)",
    )
    parser.add_argument(
        "--only", choices=["huey", "sluicegate"], help="run only this library (default: both)"
    )
    parser.add_argument(
        "--huey-drivers",
        choices=["blocked", "installed"],
        default="blocked",
        help="'blocked' stops the huey worker from importing the redis and psycopg drivers, "
        "as when huey is installed alone; 'installed' lets it import whatever the venv has "
        "(default: blocked)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds before a drain or a single round trip counts as failed (default 600)",
    )
    parser.add_argument(
        "--tmp-dir",
        type=Path,
        default=None,
        help="directory for the temporary databases (default: the system temporary directory)",
    )
    parser.add_argument(
        "--keep-tmp",
        action="store_true",
        help="keep the temporary directories, with the worker logs, instead of deleting them",
    )

    options = parser.parse_args(argv)
    for name in ("jobs", "repeat", "bulk_batch", "drain_jobs", "round_trips", "warmup"):
        if getattr(options, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if options.idle_seconds <= 0:
        parser.error("--idle-seconds must be greater than 0")
    if options.timeout <= 0:
        parser.error("--timeout must be greater than 0")
    return options


def exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    log("SIGTERM received: stopping the workers and removing the temporary directories")
    # Raising SystemExit runs the finally blocks that stop the workers.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    names = [options.only] if options.only else ["sluicegate", "huey"]
    load_before = os.getloadavg()
    root = Path(tempfile.mkdtemp(prefix="sluicegate-bench-", dir=options.tmp_dir))
    results: dict[str, Figures] = {}
    try:
        adapters = [make_adapter(name, options) for name in names]
        for adapter in adapters:
            results[adapter.name] = Figures(name=adapter.name, version=adapter.version)
        runs = measure_enqueue_one_alternating(adapters, root, options)
        for adapter in adapters:
            figures = results[adapter.name]
            figures.enqueue_one_rates = [run.rate for run in runs[adapter.name]]
            figures.enqueue_one_cpu_us = [
                (run.user_us, run.system_us) for run in runs[adapter.name]
            ]
            measure(adapter, root, options, results[adapter.name])
    finally:
        if options.keep_tmp:
            log(f"temporary directories kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print_report(results, options, root, load_before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
