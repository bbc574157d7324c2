"""Helpers for the HTTP tests: an app module on disk, server and worker processes.

Each test writes the app below into its own ``tmp_path`` and runs ``sluicegate
serve`` and ``sluicegate worker`` on it as real subprocesses. The server binds
port 0 on 127.0.0.1 and the test reads the port from its start-up log.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

import httpx

T = TypeVar("T")

#: The ``sluicegate`` command, run by the interpreter that runs the tests.
SLUICEGATE_COMMAND = [sys.executable, "-c", "from sluicegate.cli.main import main; main()"]

#: Seconds a server or worker may take to start on a loaded machine.
START_TIMEOUT = 30.0

APP_SOURCE = """\
import os
import time

import sluicegate
from sluicegate import Cancelled, job_context

app = sluicegate.App({url!r}, lease=5.0)
app.queue("bounded", max_length=200)
app.queue("stale", max_wait=0.3)
DIRECTORY = {directory!r}


def wait_for_file(path, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if job_context().cancelled:
            raise Cancelled()
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate file {{path}} did not appear within {{timeout}}s")
        time.sleep(0.01)


@app.task
def add(a: int, b: int) -> int:
    job_context().progress(0.5, "adding")
    return a + b


@app.task
def stepped(steps: int, gate: str) -> str:
    for step in range(steps):
        wait_for_file(os.path.join(DIRECTORY, f"{{gate}}-{{step}}"))
        job_context().progress((step + 1) / steps, f"step {{step + 1}}")
    return "done"


@app.task
def gated(gate: str) -> None:
    wait_for_file(os.path.join(DIRECTORY, gate))


@app.task(retries=0)
def broken() -> None:
    raise RuntimeError("always broken")


@app.task(queue="bounded")
def counted(key: str) -> None:
    fd = os.open(os.path.join(DIRECTORY, "counted.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, (key + "\\n").encode())
    finally:
        os.close(fd)


@app.task(queue="stale")
def stale() -> None:
    pass
"""


def wait_until(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.02) -> T:
    """Poll ``condition`` until it returns a true value; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class Process:
    """A ``sluicegate`` subprocess, leader of its own process group, logging to a file."""

    def __init__(self, args: list[str], directory: Path, env: Mapping[str, str]) -> None:
        self.log_path = directory / f"process-{uuid.uuid4().hex[:8]}.log"
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                [*SLUICEGATE_COMMAND, "--log-level", "info", *args],
                cwd=directory,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match[str]:
        """Wait until the log matches ``pattern``; fail early if the process exits."""

        def matched() -> re.Match[str] | None:
            found = re.search(pattern, self.log())
            if found is None and self.process.poll() is not None:
                raise AssertionError(
                    f"pid {self.pid} exited with {self.process.returncode} before logging "
                    f"{pattern!r}; log tail:\n{self.log()[-3000:]}"
                )
            return found

        return wait_until(matched, timeout, f"pid {self.pid} to log {pattern!r}")

    def kill(self) -> None:
        """SIGKILL the process group and reap the main process."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)


class Deployment:
    """An app module in a directory, with the server and workers started on it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.module = f"httpapp_{uuid.uuid4().hex[:10]}"
        self.db_path = directory / f"{self.module}.db"
        source = APP_SOURCE.format(url=f"sqlite:///{self.db_path}", directory=str(directory))
        (directory / f"{self.module}.py").write_text(source)
        self.processes: list[Process] = []
        self.base_url = ""

    @property
    def spec(self) -> str:
        return f"{self.module}:app"

    def serve(self, *args: str, env: Mapping[str, str] | None = None) -> Process:
        """Start ``sluicegate serve`` on a free loopback port and wait until it responds."""
        server = self.start(["serve", self.spec, "--port", "0", *args], env)
        match = server.wait_log(r"api server listening url=(http://\S+)")
        self.base_url = match.group(1)
        wait_until(self._healthy, START_TIMEOUT, f"{self.base_url}/healthz to answer")
        return server

    def worker(self, *args: str) -> Process:
        """Start ``sluicegate worker`` and wait until it logs that it started."""
        worker = self.start(["worker", self.spec, *args])
        worker.wait_log("worker started")
        return worker

    def start(self, args: list[str], env: Mapping[str, str] | None = None) -> Process:
        process = Process(args, self.directory, env or {})
        self.processes.append(process)
        return process

    def gate(self, name: str) -> None:
        """Create the gate file ``name`` that a ``gated`` or ``stepped`` job waits for."""
        (self.directory / name).touch()

    def counted_keys(self) -> list[str]:
        path = self.directory / "counted.log"
        return path.read_text().split() if path.exists() else []

    def kill_all(self) -> None:
        for process in self.processes:
            process.kill()

    def logs(self) -> Iterable[tuple[int, str]]:
        return [(process.pid, process.log()) for process in self.processes]

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False
