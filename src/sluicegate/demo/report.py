"""The demo's live progress display, its job counts and its closing summary."""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sluicegate.demo.tasks import IndexTotals
from sluicegate.queue import Queue
from sluicegate.store import JobRecord, JobState

logger = logging.getLogger(__name__)

#: Error type recorded for a job that raised ``sluicegate.Fail``: here, a file that does not parse.
PARSE_FAILURE_TYPE = "sluicegate.errors.Fail"


@dataclass(frozen=True, slots=True)
class StateCounts:
    """How many of the demo's file jobs are in each state.

    ``queued`` counts ready and delayed messages; a job waiting for its
    retry backoff is delayed, so it counts as queued.
    """

    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.cancelled


class JobCounter:
    """Counts one task's jobs by state, cheaply enough to run a few times per second.

    The queue depth comes from the queue's stats. The final states come from
    one ``GROUP BY`` query on the SQLite ``jobs`` table over a connection of
    its own, in query-only mode, so a tick never reads job records or results.
    """

    # NOTE: the store protocol has no count-by-state call, so this reads the SQLite
    # schema directly and works only with the SQLite backend.

    def __init__(self, database: Path, task: str) -> None:
        self._task = task
        self._conn = sqlite3.connect(database, timeout=5)
        self._conn.execute("PRAGMA query_only = ON")

    def count(self, queue: Queue) -> StateCounts:
        """Return the current counts of the task's jobs on ``queue``."""
        stats = queue.stats()
        rows = self._conn.execute(
            "SELECT state, count(*) FROM jobs WHERE task = ? GROUP BY state", (self._task,)
        ).fetchall()
        states: dict[str, int] = dict(rows)
        return StateCounts(
            queued=stats.ready + stats.delayed,
            running=stats.running,
            succeeded=states.get(JobState.SUCCEEDED.value, 0),
            failed=states.get(JobState.FAILED.value, 0),
            cancelled=states.get(JobState.CANCELLED.value, 0),
        )

    def close(self) -> None:
        self._conn.close()


class ProgressDisplay:
    """A rich progress bar of finished jobs, with the count of each state beside it."""

    def __init__(self, console: Console, total: int) -> None:
        self._progress = Progress(
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            TextColumn("{task.fields[states]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self._task = self._progress.add_task("index", total=total, states="starting")

    def __enter__(self) -> ProgressDisplay:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def update(self, counts: StateCounts) -> None:
        states = (
            f"queued {counts.queued}  running {counts.running}  "
            f"succeeded {counts.succeeded}  failed {counts.failed}"
        )
        self._progress.update(self._task, completed=counts.finished, states=states)


@dataclass(frozen=True, slots=True)
class FailedJob:
    """A file job that ended ``failed``: the file, relative to the stdlib, and the error."""

    path: str
    error_type: str
    message: str

    @property
    def is_parse_failure(self) -> bool:
        return self.error_type == PARSE_FAILURE_TYPE


@dataclass(frozen=True, slots=True)
class RunStats:
    """Figures computed once from the final records of the file jobs.

    ``seconds`` runs from the first job's creation to the last job's finish.
    ``waits`` are queue waits in seconds: ``started_at`` minus ``created_at``.
    ``lost`` lists the ids of jobs with no record or a record that is not final.
    """

    jobs: int
    succeeded: int
    failed: list[FailedJob]
    seconds: float
    waits: list[float]
    retries: int
    dead_letters: int
    lost: list[str]

    @property
    def jobs_per_second(self) -> float:
        return self.jobs / self.seconds if self.seconds > 0 else 0.0

    @property
    def unexpected_failures(self) -> list[FailedJob]:
        return [job for job in self.failed if not job.is_parse_failure]


def summarize_records(
    records: Sequence[JobRecord], path_by_id: Mapping[str, str], root: Path, dead_letters: int
) -> RunStats:
    """Compute the run's figures from the records of its file jobs."""
    found = {record.id: record for record in records}
    lost = [job_id for job_id in path_by_id if job_id not in found]
    lost += [record.id for record in records if not record.state.is_final]
    failed = []
    for record in records:
        if record.state is JobState.FAILED:
            error_type = record.error.type if record.error else "UnknownError"
            message = record.error.message if record.error else "no error recorded"
            path = _relative(path_by_id.get(record.id, "?"), root)
            failed.append(FailedJob(path, error_type, message))
    failed.sort(key=lambda job: job.path)
    created = [record.created_at for record in records]
    finished = [record.finished_at for record in records if record.finished_at is not None]
    seconds = max(finished) - min(created) if created and finished else 0.0
    return RunStats(
        jobs=len(path_by_id),
        succeeded=sum(record.state is JobState.SUCCEEDED for record in records),
        failed=failed,
        seconds=seconds,
        waits=[
            record.started_at - record.created_at
            for record in records
            if record.started_at is not None
        ],
        retries=sum(max(record.attempts - 1, 0) for record in records),
        dead_letters=dead_letters,
        lost=lost,
    )


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return the nearest-rank percentile of ``values`` (``fraction`` 0.5 for p50); 0 if empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(math.ceil(fraction * len(ordered)) - 1, 0)
    return ordered[min(rank, len(ordered) - 1)]


def print_summary(console: Console, root: Path, stats: RunStats, totals: IndexTotals) -> None:
    """Print the run's figures, the failed files and the most imported modules."""

    def say(text: str) -> None:
        print_plain(console, text)

    say(f"Indexed the standard library at {root}")
    say(f"  jobs           {stats.jobs} ({stats.succeeded} succeeded, {len(stats.failed)} failed)")
    say(f"  throughput     {stats.jobs_per_second:.1f} jobs/s ({stats.seconds:.2f} s)")
    say(
        f"  queue wait     p50 {percentile(stats.waits, 0.5):.3f} s, "
        f"p99 {percentile(stats.waits, 0.99):.3f} s"
    )
    say(f"  retries        {stats.retries}")
    say(f"  dead letters   {stats.dead_letters}")
    say(
        f"  totals         {totals['files']} files, {totals['lines']} lines, "
        f"{totals['functions']} functions, {totals['classes']} classes"
    )
    say("")
    say(f"Failed files ({len(stats.failed)}):")
    for job in stats.failed:
        kind = "" if job.is_parse_failure else f"{job.error_type}: "
        say(f"  {job.path}: {kind}{job.message}")
    say("")
    say(f"Top {len(totals['top_imports'])} imported modules (number of files importing each):")
    for rank, (name, count) in enumerate(totals["top_imports"], start=1):
        say(f"  {rank:>2}. {name:<20} {count:>5}")


def print_plain(console: Console, text: str) -> None:
    """Print ``text`` as is: no markup, no highlighting, and no wrapping at the console width.

    Paths and error messages may contain "[", which rich would read as markup.
    """
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path
