"""Index the running interpreter's standard library with a real worker: ``sluicegate demo``.

:func:`run_demo` starts ``sluicegate worker`` as a subprocess on a fresh
SQLite database, enqueues one ``index_file`` job per ``.py`` file of the
standard library, shows the progress until every job is final, then runs one
aggregation job and prints a summary. The demo process is the producer.
"""

from __future__ import annotations

import logging
import os
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from rich.console import Console

from sluicegate.app import App
from sluicegate.demo.process import Deadline, DemoError, DemoPaths, WorkerProcess
from sluicegate.demo.report import (
    JobCounter,
    ProgressDisplay,
    RunStats,
    StateCounts,
    print_plain,
    print_summary,
    summarize_records,
)
from sluicegate.demo.signals import stop_signals_as_interrupt
from sluicegate.demo.tasks import AGGREGATE_TASK, INDEX_TASK, QUEUE, IndexTotals, build_app
from sluicegate.errors import JobFailed, JobTimeout, QueueFull
from sluicegate.job import Job
from sluicegate.task import Task

logger = logging.getLogger(__name__)

#: Jobs per ``enqueue_many`` call, each one transaction.
ENQUEUE_BATCH = 200

#: Seconds between two reads of the job counts for the progress display.
POLL_INTERVAL = 0.25

#: Default limit, in seconds, on the whole run before the demo gives up.
DEFAULT_TIMEOUT = 120.0

#: How many of the most imported modules the summary lists.
TOP_MODULES = 10

#: Directories under the stdlib that hold installed packages or bytecode, not the stdlib.
SKIPPED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def run_demo(db: str | None, concurrency: int, timeout: float = DEFAULT_TIMEOUT) -> int:
    """Run the demo and return the exit code.

    ``db`` is a database file that must not exist yet (default: a new
    temporary directory, which is kept so the log and database can be
    inspected). ``concurrency`` is the worker's concurrency; ``timeout``
    bounds the whole run in seconds.

    Returns 0 once every job is final and the summary is printed, even when
    some files fail to parse. Returns 1 if the worker died, jobs were lost,
    a job failed for another reason, or the time ran out. Returns 2 for an
    unusable ``db`` and 130 when interrupted.
    """
    console = Console()
    errors = Console(stderr=True)
    try:
        paths = prepare_paths(db)
    except DemoError as exc:
        print_plain(errors, f"error: {exc}")
        return EXIT_USAGE
    root = Path(sysconfig.get_paths()["stdlib"])
    files = find_stdlib_files(root)
    if not files:
        print_plain(errors, f"error: no .py files found under {root}")
        return EXIT_FAILED
    app = build_app(f"sqlite:///{paths.database}")
    worker = WorkerProcess(paths, concurrency)
    code = EXIT_FAILED
    try:
        with stop_signals_as_interrupt():
            stats = _run(console, app, worker, paths, root, files, Deadline(timeout))
        code = _exit_code(errors, stats)
    except KeyboardInterrupt:
        print_plain(errors, "interrupted: stopping the worker")
        code = EXIT_INTERRUPTED
    except DemoError as exc:
        print_plain(errors, f"error: {exc}")
        print_plain(errors, worker.log_tail())
        code = EXIT_FAILED
    finally:
        worker_code = worker.stop()
        app.close()
    if worker_code != 0 and worker.signalled:
        print_plain(errors, f"error: the worker exited with code {worker_code} after SIGTERM")
        code = code or EXIT_FAILED
    print_plain(console, f"Worker log: {paths.worker_log}")
    print_plain(console, f"Database:   {paths.database}")
    return code


def prepare_paths(db: str | None) -> DemoPaths:
    """Choose the database and log files; raise ``DemoError`` if ``db`` exists already."""
    if db is None:
        directory = Path(tempfile.mkdtemp(prefix="sluicegate-demo-"))
        return DemoPaths(directory / "stdlib-index.db", directory / "worker.log")
    database = Path(db).absolute()
    if database.exists():
        raise DemoError(f"{database} exists; the demo needs a fresh database, so pass a new path")
    database.parent.mkdir(parents=True, exist_ok=True)
    return DemoPaths(database, database.with_name(database.name + ".worker.log"))


def find_stdlib_files(root: Path) -> list[Path]:
    """Return every ``.py`` file under ``root``, sorted, skipping installed-package dirs."""
    files: list[Path] = []
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = sorted(name for name in subdirectories if name not in SKIPPED_DIRS)
        files += [Path(directory, name) for name in sorted(names) if name.endswith(".py")]
    return files


def _run(
    console: Console,
    app: App,
    worker: WorkerProcess,
    paths: DemoPaths,
    root: Path,
    files: Sequence[Path],
    deadline: Deadline,
) -> RunStats:
    counter = JobCounter(paths.database, INDEX_TASK)
    try:
        with ProgressDisplay(console, len(files)) as display:
            path_by_id = _enqueue_files(app, files, counter, display, deadline)
            _wait_until_final(app, worker, counter, display, len(path_by_id), deadline)
    finally:
        counter.close()
    records = app.backend.get_jobs(list(path_by_id))
    dead_letters = app.queue(QUEUE).stats().dead
    stats = summarize_records(records, path_by_id, root, dead_letters)
    if stats.lost:
        raise DemoError(f"{len(stats.lost)} jobs lost, e.g. {', '.join(stats.lost[:3])}")
    totals = _aggregate(app, worker, list(path_by_id), deadline)
    print_summary(console, root, stats, totals)
    return stats


def _enqueue_files(
    app: App,
    files: Sequence[Path],
    counter: JobCounter,
    display: ProgressDisplay,
    deadline: Deadline,
) -> dict[str, str]:
    """Enqueue one job per file in batches; return the file path of each job id."""
    task = app.get_task(INDEX_TASK)
    queue = app.queue(QUEUE)
    path_by_id: dict[str, str] = {}
    for start in range(0, len(files), ENQUEUE_BATCH):
        batch = [str(path) for path in files[start : start + ENQUEUE_BATCH]]
        jobs = _enqueue_batch(task, batch, deadline)
        path_by_id.update((job.id, path) for job, path in zip(jobs, batch, strict=True))
        display.update(counter.count(queue))
    return path_by_id


def _enqueue_batch(task: Task[Any, Any], paths: list[str], deadline: Deadline) -> list[Job[Any]]:
    """Enqueue one batch, waiting out ``QueueFull`` for as long as the deadline allows."""
    while True:
        try:
            return task.enqueue_many([((path,), {}) for path in paths])
        except QueueFull as exc:
            if exc.retry_after >= deadline.remaining():
                raise DemoError(f"queue {QUEUE} stayed full: {exc}") from exc
            logger.info("queue full, retrying the batch retry_after_s=%.2f", exc.retry_after)
            time.sleep(exc.retry_after)


def _wait_until_final(
    app: App,
    worker: WorkerProcess,
    counter: JobCounter,
    display: ProgressDisplay,
    total: int,
    deadline: Deadline,
) -> StateCounts:
    queue = app.queue(QUEUE)
    while True:
        counts = counter.count(queue)
        display.update(counts)
        if counts.finished >= total:
            return counts
        worker.check_alive()
        deadline.check(f"{total - counts.finished} of {total} jobs are not final")
        time.sleep(POLL_INTERVAL)


def _aggregate(
    app: App, worker: WorkerProcess, job_ids: list[str], deadline: Deadline
) -> IndexTotals:
    """Run the aggregation job over ``job_ids`` and return its result."""
    job = app.get_task(AGGREGATE_TASK).enqueue(job_ids, top=TOP_MODULES)
    while True:
        wait = min(1.0, max(deadline.remaining(), 0.01))
        try:
            return cast(IndexTotals, job.result(timeout=wait))
        except JobTimeout:
            worker.check_alive()
            deadline.check(f"the aggregation job {job.id} is not final")
        except JobFailed as exc:
            raise DemoError(f"the aggregation job failed: {exc}") from exc


def _exit_code(errors: Console, stats: RunStats) -> int:
    """Return 0 unless a job failed for a reason other than a file that does not parse."""
    unexpected = stats.unexpected_failures
    if not unexpected:
        return EXIT_OK
    print_plain(
        errors, f"error: {len(unexpected)} jobs failed for a reason other than a parse error"
    )
    return EXIT_FAILED
