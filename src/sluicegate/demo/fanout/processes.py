"""``sluicegate serve`` and ``sluicegate worker`` subprocesses of the fan-out demo.

Each runs in its own session and logs to a file. :meth:`Service.stop` sends
SIGTERM to its pid, waits a bounded time, then sends SIGKILL.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

logger = logging.getLogger(__name__)

#: The ``sluicegate`` command of the running interpreter.
SLUICEGATE_COMMAND = [sys.executable, "-c", "from sluicegate.cli.main import main; main()"]

#: Seconds a server or worker may take to start.
START_TIMEOUT = 30.0

#: Seconds to wait for an exit after SIGTERM, and again after SIGKILL.
STOP_TIMEOUT = 10.0
KILL_TIMEOUT = 5.0

#: Seconds between two checks while waiting for a start-up condition.
POLL_INTERVAL = 0.05

#: Lines of a process's log shown in an error.
LOG_TAIL_LINES = 20


class ServiceError(Exception):
    """A subprocess failed to start or exited early."""


class Service:
    """One ``sluicegate`` subcommand as a subprocess with its log in ``log_path``."""

    def __init__(self, name: str, args: Sequence[str], log_path: Path, env: Mapping[str, str]):
        self.name = name
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*SLUICEGATE_COMMAND, "--log-level", "info", *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
                start_new_session=True,
            )
        logger.debug("%s started pid=%d log=%s", name, self.process.pid, log_path)

    @property
    def pid(self) -> int:
        return self.process.pid

    def check_alive(self) -> None:
        """Raise ``ServiceError`` if the process has exited."""
        code = self.process.poll()
        if code is not None:
            raise ServiceError(f"the {self.name} (pid {self.pid}) exited early with code {code}")

    def wait_log(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match[str]:
        """Wait until the log matches ``pattern``; raise ``ServiceError`` on exit or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.log_path.read_text(errors="replace"))
            if found is not None:
                return found
            self.check_alive()
            if time.monotonic() >= deadline:
                raise ServiceError(
                    f"the {self.name} (pid {self.pid}) did not log {pattern!r} within {timeout:g} s"
                )
            time.sleep(POLL_INTERVAL)

    def stop(self) -> int:
        """Send SIGTERM, then SIGKILL after ``STOP_TIMEOUT``; return the exit code."""
        if self.process.poll() is not None:
            return self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            logger.warning(
                "%s still running %g s after SIGTERM, killing it pid=%d",
                self.name,
                STOP_TIMEOUT,
                self.pid,
            )
            self.process.kill()
            return self.process.wait(KILL_TIMEOUT)

    def log_tail(self) -> str:
        """Return the last lines of the log, for an error report."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError as exc:
            return f"cannot read the {self.name} log {self.log_path}: {exc}"
        tail = "\n".join(lines[-LOG_TAIL_LINES:]) or "(empty)"
        return f"last lines of the {self.name} log {self.log_path}:\n{tail}"


def start_server(app_spec: str, log_path: Path, env: Mapping[str, str]) -> tuple[Service, str]:
    """Start ``sluicegate serve`` on a free loopback port; return it and its base URL."""
    server = Service("server", ["serve", app_spec, "--port", "0"], log_path, env)
    try:
        url = server.wait_log(r"api server listening url=(http://\S+)").group(1)
        _wait_ready(server, url)
    except BaseException:
        server.stop()
        raise
    return server, url


def start_worker(
    app_spec: str, concurrency: int, log_path: Path, env: Mapping[str, str]
) -> Service:
    """Start ``sluicegate worker`` and wait until it logs that it started."""
    args = ["worker", app_spec, "--concurrency", str(concurrency), "--grace", "5"]
    worker = Service("worker", args, log_path, env)
    try:
        worker.wait_log("worker started")
    except BaseException:
        worker.stop()
        raise
    return worker


def _wait_ready(server: Service, url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        server.check_alive()
        if time.monotonic() >= deadline:
            raise ServiceError(f"{url}/readyz did not return 200 within {START_TIMEOUT:g} s")
        time.sleep(POLL_INTERVAL)
