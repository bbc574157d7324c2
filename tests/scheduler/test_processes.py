"""Real scheduler processes: leader failover under SIGKILL, and the worker's scheduler thread.

Every process a test starts leads its own process group and is SIGKILLed
with it at teardown, whether the test passed or not.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import sqlite3
import subprocess
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conformance_backends import FACTORIES, BackendTarget, BackendUnavailable

from sluicegate.backends.base import Backend
from sluicegate.schedule import iso_utc, parse_iso_utc
from sluicegate.scheduler import LEADER_LOCK, read_state
from worker.support import SLUICEGATE_COMMAND, WorkerProcess, wait_until

from .support import SQLITE_JOB_KEYS

#: Lease of the leader lock in the failover test, in seconds.
LEASE = 2.0

#: Seconds a process may take to start on a loaded machine.
START_TIMEOUT = 30.0

#: Seconds allowed on top of one lease for a takeover on a loaded machine.
TAKEOVER_SLACK = 3.0

APP_SOURCE = """
import datetime as dt
import os

import sluicegate

app = sluicegate.App({url!r})
RUNS = {runs!r}


@app.periodic(every=dt.timedelta(seconds=1), name="beat", catch_up="all")
def beat() -> None:
    fd = os.open(RUNS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"run\\n")
    finally:
        os.close(fd)
"""

FIRED = re.compile(r"schedule fired schedule=beat fire_time=(\S+) job_id=(\S+) created=true")

StartProcess = Callable[..., WorkerProcess]


def app_url(target: BackendTarget) -> str:
    """Return the URL an App uses for ``target`` (a file path for SQLite, else a URL)."""
    return f"sqlite:///{target.location}" if target.kind == "sqlite" else target.location


@pytest.fixture(params=sorted(FACTORIES))
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BackendTarget]:
    """A fresh backend of each kind the conformance suite lists, skipped if unavailable."""
    try:
        made = FACTORIES[request.param](tmp_path)
    except BackendUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{request.param} backend unavailable, and CI runs every backend: {exc}")
        pytest.skip(f"{request.param} backend unavailable: {exc}")
    yield made
    made.cleanup()


@pytest.fixture
def observer(target: BackendTarget) -> Iterator[Backend]:
    """A connection to the test's backend, on the real clock."""
    backend = target.open()
    yield backend
    backend.close()


@pytest.fixture
def app_spec(tmp_path: Path, target: BackendTarget) -> str:
    """Write the app module into ``tmp_path`` and return its ``module:app`` spec."""
    name = f"beat_app_{uuid.uuid4().hex[:10]}"
    source = APP_SOURCE.format(url=app_url(target), runs=str(tmp_path / "runs.log"))
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    return f"{name}:app"


@pytest.fixture
def start_process(tmp_path: Path) -> Iterator[StartProcess]:
    """Return a factory: ``start_process(*args)`` runs ``sluicegate ARGS`` in ``tmp_path``."""
    started: list[WorkerProcess] = []

    def start(*args: str) -> WorkerProcess:
        log_path = tmp_path / f"process-{len(started)}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                [*SLUICEGATE_COMMAND, "--log-level", "info", *args],
                cwd=tmp_path,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(WorkerProcess(process, log_path))
        return started[-1]

    yield start
    for process in started:
        process.kill()


def leader_pid(observer: Backend) -> int | None:
    holder = observer.lock_holder(LEADER_LOCK)
    return None if holder is None else int(holder[0].rsplit(":", 2)[1])


def last_fire(observer: Backend) -> dt.datetime | None:
    _, state = read_state(observer, "beat")
    return None if state is None else state.last_fire


def wait_fires_after(observer: Backend, moment: float, count: int) -> None:
    """Wait until the last fire is ``count`` seconds or more past ``moment`` (Unix time)."""

    def advanced() -> bool:
        fire = last_fire(observer)
        return fire is not None and fire.timestamp() >= moment + count

    wait_until(advanced, START_TIMEOUT, f"{count} fires after {moment:.3f}", interval=0.05)


@pytest.mark.slow
def test_failover_enqueues_each_fire_once(
    app_spec: str, target: BackendTarget, observer: Backend, start_process: StartProcess
) -> None:
    processes = [start_process("scheduler", app_spec, "--lease", str(LEASE)) for _ in range(3)]
    by_pid = {process.pid: process for process in processes}
    wait_until(lambda: leader_pid(observer) in by_pid, START_TIMEOUT, "a leader")
    wait_fires_after(observer, time.time(), 2)

    for _ in range(2):
        # Given a leader that fires, when it is SIGKILLed
        victim = by_pid.pop(leader_pid(observer))  # type: ignore[arg-type]
        victim.kill()
        killed_at = time.time()

        # Then another takes over within one lease and fires on
        wait_until(
            lambda: leader_pid(observer) in by_pid,
            LEASE + TAKEOVER_SLACK + 5.0,
            "a new leader",
            interval=0.05,
        )
        wait_fires_after(observer, killed_at, 2)

    survivor = next(iter(by_pid.values()))
    survivor.send(signal.SIGTERM)
    assert survivor.wait_exit(START_TIMEOUT) == 0
    assert observer.lock_holder(LEADER_LOCK) is None

    fired = [match for p in processes for match in FIRED.findall(p.log())]
    counts = Counter(fire_time for fire_time, _ in fired)
    assert counts, "no fire was logged"
    assert max(counts.values()) == 1, f"fires enqueued twice: {counts.most_common(3)}"
    times = sorted(parse_iso_utc(fire_time) for fire_time in counts)
    expected = [times[0] + dt.timedelta(seconds=k) for k in range(len(times))]
    assert [iso_utc(t) for t in times] == [iso_utc(t) for t in expected], "fires are missing"

    # Every fire, including those during a takeover, was enqueued within one lease (plus slack).
    records = {r.id: r for r in observer.get_jobs([job_id for _, job_id in fired])}
    assert len(records) == len(fired)
    late = [records[job_id].created_at - parse_iso_utc(t).timestamp() for t, job_id in fired]
    assert max(late) <= LEASE + TAKEOVER_SLACK, f"latest fire enqueued {max(late):.2f}s late"
    if target.kind == "sqlite":
        assert set(sqlite_jobs_per_key(target.location).values()) == {1}


def sqlite_jobs_per_key(path: str) -> dict[str, int]:
    """Count the job records of each idempotency key, straight from the SQLite file."""
    conn = sqlite3.connect(path, timeout=30.0)
    try:
        rows = conn.execute(
            f"SELECT idempotency_key, count(*) FROM ({SQLITE_JOB_KEYS}) GROUP BY idempotency_key"
        ).fetchall()
    finally:
        conn.close()
    return {str(key): int(count) for key, count in rows}


@pytest.mark.slow
def test_worker_runs_its_own_scheduler(
    app_spec: str, tmp_path: Path, start_process: StartProcess
) -> None:
    runs = tmp_path / "runs.log"
    worker = start_process("worker", app_spec, "--with-scheduler", "--grace", "5")
    worker.wait_log("worker started", START_TIMEOUT)
    worker.wait_log("leadership acquired", START_TIMEOUT)
    wait_until(
        lambda: runs.exists() and len(runs.read_text().splitlines()) >= 2,
        START_TIMEOUT,
        "two runs of the periodic task",
    )
    worker.send(signal.SIGTERM)
    assert worker.wait_exit(START_TIMEOUT) == 0
    assert "leadership released" in worker.log()
