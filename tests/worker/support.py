"""Helpers for the worker tests: app modules on disk, worker processes, bounded waits.

Each test writes its tasks into a module in its own ``tmp_path``, imports that
module to enqueue, and runs ``sluicegate worker MODULE:app`` as a real
subprocess against the SQLite file next to it. Tasks record what they do by
appending one line per event to a log file opened with ``O_APPEND``, which
stays correct across threads, process-pool children and killed workers.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import pytest

from sluicegate import App, JobRecord, Task
from sluicegate.backends._wakeup import channel_dir
from sluicegate.backends.sqlite_schema import DEAD, RESERVED

T = TypeVar("T")

#: The ``sluicegate`` command, run by the interpreter that runs the tests.
SLUICEGATE_COMMAND = [sys.executable, "-c", "from sluicegate.cli.main import main; main()"]

#: Seconds a worker may take to start and log "worker started" on a loaded machine.
WORKER_START_TIMEOUT = 30.0

#: Seconds a killed process group may take to be reaped at teardown.
REAP_TIMEOUT = 10.0

APP_HEADER = """\
import asyncio
import hashlib
import os
import time

import sluicegate
from sluicegate import Backoff, Fail, Retry, job_context

EVENT_LOG = {log_path!r}

app = sluicegate.App({url!r}, lease={lease!r})


def mark(event, *fields):
    \"\"\"Append one line "EVENT JOB_ID PID TIME FIELDS..." to the event log.\"\"\"
    parts = [event, job_context().job_id, str(os.getpid()), repr(time.time())]
    line = " ".join([*parts, *map(str, fields)]) + "\\n"
    fd = os.open(EVENT_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def wait_for_file(path, timeout=60.0):
    \"\"\"Block until ``path`` exists; raise TimeoutError after ``timeout`` seconds.\"\"\"
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate file {{path}} did not appear within {{timeout}}s")
        time.sleep(0.01)

"""

#: ``APP_HEADER`` without asyncio and hashlib, for an app whose worker must not load them.
PLAIN_APP_HEADER = APP_HEADER.replace("import asyncio\nimport hashlib\n", "")

#: The ``--loop`` values that run sync thread-pool tasks: Worker's and ThreadWorker's.
BOTH_LOOPS = ("asyncio", "threads")

#: Runs a test once on each driver: its workers get ``--loop asyncio``, then ``--loop threads``.
on_both_drivers = pytest.mark.parametrize("worker_loop", BOTH_LOOPS, indirect=True)


def task_cases(
    sync_source: str, sync_tasks: Iterable[str], source: str, other_tasks: Iterable[str]
) -> list[Any]:
    """Return ``(source, task, worker_loop)`` parameters, ids ``task-loop`` or ``task``.

    Each of ``sync_tasks`` runs on an app of ``sync_source`` on both drivers, and
    each of ``other_tasks`` (async or process-pool) on an app of ``source`` on Worker.
    Parametrize ``worker_loop`` indirectly.
    """
    cases = []
    for task in sync_tasks:
        for loop in BOTH_LOOPS:
            cases.append(pytest.param(sync_source, task, loop, id=f"{task}-{loop}"))
    for task in other_tasks:
        cases.append(pytest.param(source, task, "auto", id=task))
    return cases


def wait_until(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.02) -> T:
    """Poll ``condition`` until it returns a true value, and return that value.

    Raises ``AssertionError`` naming ``what`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class Event:
    """One line of the event log, written by a task through ``mark``."""

    kind: str
    job_id: str
    pid: int
    time: float
    fields: tuple[str, ...]


class AppModule:
    """A generated app module in ``directory``, imported into the test process."""

    def __init__(self, name: str, directory: Path, module: ModuleType) -> None:
        self.name = name
        self.directory = directory
        self.module = module
        self.log_path = Path(module.EVENT_LOG)
        self.db_path = directory / f"{name}.db"

    @property
    def app(self) -> App:
        app: App = self.module.app
        return app

    @property
    def spec(self) -> str:
        return f"{self.name}:app"

    def task(self, name: str) -> Task[Any, Any]:
        task: Task[Any, Any] = getattr(self.module, name)
        return task

    def gate(self, name: str) -> Path:
        """Return the path of a gate file that tasks wait for; the test creates it."""
        return self.directory / f"gate-{name}"

    def events(self, kind: str | None = None, job_id: str | None = None) -> list[Event]:
        if not self.log_path.exists():
            return []
        found = []
        for line in self.log_path.read_text().splitlines():
            event_kind, event_job, pid, when, *fields = line.split(" ")
            if kind is not None and event_kind != kind:
                continue
            if job_id is not None and event_job != job_id:
                continue
            found.append(Event(event_kind, event_job, int(pid), float(when), tuple(fields)))
        return found

    def event_counts(self, kind: str) -> Counter[str]:
        """Count the events of ``kind`` per job id."""
        return Counter(event.job_id for event in self.events(kind))

    def records(self, job_ids: Iterable[str]) -> dict[str, JobRecord]:
        ids = list(job_ids)
        return {record.id: record for record in self.app.backend.get_jobs(ids)}

    def record(self, job_id: str) -> JobRecord:
        record = self.app.backend.get_job(job_id)
        assert record is not None, f"job {job_id} not found"
        return record

    def wait_final(self, job_ids: Iterable[str], timeout: float) -> dict[str, JobRecord]:
        """Wait until every job is succeeded, failed or cancelled; return the records."""
        ids = list(job_ids)

        def all_final() -> dict[str, JobRecord] | None:
            records = self.records(ids)
            done = [r for r in records.values() if r.state.is_final]
            return records if len(done) == len(ids) else None

        try:
            return wait_until(all_final, timeout, f"{len(ids)} jobs to reach a final state")
        except AssertionError:
            states = Counter(r.state.value for r in self.records(ids).values())
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {len(ids)} jobs to reach a final "
                f"state; states now: {dict(states)}"
            ) from None

    def wait_state(self, job_id: str, state: str, timeout: float) -> JobRecord:
        return wait_until(
            lambda: (record := self.record(job_id)).state.value == state and record,
            timeout,
            f"job {job_id} to be {state}",
        )

    def sql(self, query: str, params: Iterable[Any] = ()) -> list[Any]:
        """Run a read-only query on the database file, in its own connection."""
        conn = sqlite3.connect(self.db_path, timeout=30.0)
        try:
            return conn.execute(query, tuple(params)).fetchall()
        finally:
            conn.close()

    def reserved_ids(self) -> set[str]:
        """Return the ids of messages under a lease now."""
        return {row[0] for row in self.sql(f"SELECT id FROM messages WHERE state = {RESERVED}")}

    def live_messages(self, queue: str) -> int:
        """Count the queue's messages that are not dead, straight from the messages table."""
        rows = self.sql(
            f"SELECT count(*) FROM messages WHERE queue = ? AND state != {DEAD}", (queue,)
        )
        return int(rows[0][0])


def write_app_module(
    directory: Path, source: str, lease: float, header: str = APP_HEADER
) -> AppModule:
    """Write an app module with ``header`` and ``source``, and import it."""
    name = f"tasks_{uuid.uuid4().hex[:12]}"
    log_path = directory / "events.log"
    url = f"sqlite:///{directory / name}.db"
    text = header.format(log_path=str(log_path), url=url, lease=lease)
    (directory / f"{name}.py").write_text(text + textwrap.dedent(source))
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    module = importlib.import_module(name)
    return AppModule(name, directory, module)


def unload_app_module(module: AppModule) -> None:
    """Close and forget the module, and remove its wake-up socket directories."""
    module.app.close()
    sys.modules.pop(module.name, None)
    with contextlib.suppress(ValueError):
        sys.path.remove(str(module.directory))
    # The SQLite backend keeps its wake-up sockets in the system temporary directory.
    directory = channel_dir(str(module.db_path))
    for path in (directory, directory + "-results"):
        shutil.rmtree(path, ignore_errors=True)


class WorkerProcess:
    """A ``sluicegate worker`` subprocess, leader of its own process group."""

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, text: str, timeout: float) -> None:
        """Wait until the worker's log contains ``text``; fail early if the worker exits."""

        def logged() -> bool:
            if text in self.log():
                return True
            if not self.alive:
                raise AssertionError(
                    f"worker pid {self.pid} exited with {self.process.returncode} before "
                    f"logging {text!r}; log tail:\n{self.log()[-3000:]}"
                )
            return False

        wait_until(logged, timeout, f"worker pid {self.pid} to log {text!r}")

    def send(self, signum: int) -> None:
        """Send ``signum`` to the worker's main process only."""
        os.kill(self.pid, signum)

    def send_group(self, signum: int) -> None:
        """Send ``signum`` to the worker's process group: main process and pool children."""
        os.killpg(self.pid, signum)

    def wait_exit(self, timeout: float) -> int:
        """Wait for the main process to exit and return its exit status."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker pid {self.pid} still running {timeout:g}s later; "
                f"log tail:\n{self.log()[-3000:]}"
            ) from None

    def kill(self) -> None:
        """SIGKILL the whole process group and reap the main process."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(REAP_TIMEOUT)


def start_worker_process(module: AppModule, args: Iterable[str], index: int) -> WorkerProcess:
    """Start ``sluicegate worker`` for ``module`` with ``args``; do not wait for it."""
    log_path = module.directory / f"worker-{index}.log"
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [*SLUICEGATE_COMMAND, "--log-level", "info", "worker", module.spec, *args],
            cwd=module.directory,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return WorkerProcess(process, log_path)


def text_of_size(size: int) -> str:
    """Return text whose UTF-8 encoding is exactly ``size`` bytes, mostly multi-byte."""
    unit = "aé€🚀"  # 1 + 2 + 3 + 4 bytes in UTF-8
    text = unit * (size // 10) + "a" * (size % 10)
    assert len(text.encode()) == size
    return text


#: ``make_app(source, lease=2.0, header=APP_HEADER)``: the factory of the ``make_app`` fixture.
MakeApp = Callable[..., AppModule]

#: ``start_worker(module, *args, ready=True)``: the factory of the ``start_worker`` fixture.
StartWorker = Callable[..., WorkerProcess]
