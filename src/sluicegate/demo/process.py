"""The demo's worker subprocess, and the deadline that bounds every wait of the demo."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sluicegate.demo.tasks import DB_ENV

logger = logging.getLogger(__name__)

#: ``module:attribute`` of the App the worker subprocess imports.
WORKER_APP_SPEC = "sluicegate.demo.worker_app:app"

#: Seconds the worker's running jobs get to finish after SIGTERM.
WORKER_GRACE = 5.0

#: Seconds to wait for the worker to exit after SIGTERM, and again after SIGKILL.
STOP_TIMEOUT = WORKER_GRACE + 10.0
KILL_TIMEOUT = 5.0

#: Lines of the worker's log shown when the demo fails.
LOG_TAIL_LINES = 20


class DemoError(Exception):
    """The demo cannot finish: the worker died, jobs were lost, or time ran out."""


@dataclass(frozen=True, slots=True)
class DemoPaths:
    """The demo's database file and the file that receives the worker's log."""

    database: Path
    worker_log: Path


class Deadline:
    """A point in time ``seconds`` from now, by the monotonic clock."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self._end - time.monotonic()

    def check(self, what: str) -> None:
        """Raise ``DemoError`` saying ``what`` was unfinished once the deadline passed."""
        if self.remaining() <= 0:
            raise DemoError(f"timed out after {self.seconds:g} s: {what}")


class WorkerProcess:
    """``sluicegate worker`` for the demo's App, as a subprocess logging to a file.

    The worker runs in its own session, so a Ctrl-C in the terminal reaches
    only the demo, which then stops the worker with SIGTERM. ``signalled`` is
    true once :meth:`stop` sent SIGTERM, so an exit code after a stop can be
    distinguished from an early death.
    """

    def __init__(self, paths: DemoPaths, concurrency: int) -> None:
        self.log_path = paths.worker_log
        command = [
            sys.executable,
            "-c",
            "from sluicegate.cli.main import main; main()",
            "--log-level",
            "warning",
            "worker",
            WORKER_APP_SPEC,
            "--concurrency",
            str(concurrency),
            "--grace",
            f"{WORKER_GRACE:g}",
        ]
        environment = {**os.environ, DB_ENV: str(paths.database)}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,
            )
        self.signalled = False
        logger.debug("worker started pid=%d log=%s", self.process.pid, self.log_path)

    def check_alive(self) -> None:
        """Raise ``DemoError`` if the worker has exited."""
        code = self.process.poll()
        if code is not None:
            raise DemoError(f"the worker (pid {self.process.pid}) exited early with code {code}")

    def stop(self) -> int:
        """Stop the worker with SIGTERM, then SIGKILL if it outlives ``STOP_TIMEOUT``.

        A Ctrl-C while waiting sends a second SIGTERM, on which the worker gives
        its running jobs back at once, and is raised again once the worker is gone.
        Returns the worker's exit code; negative for a signal, as in ``subprocess``.
        """
        if self.process.poll() is not None:
            return self.process.returncode
        self.signalled = True
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            logger.warning(
                "worker still running %g s after SIGTERM, killing it pid=%d",
                STOP_TIMEOUT,
                self.process.pid,
            )
            return self._kill()
        except KeyboardInterrupt:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(KILL_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._kill()
            raise

    def _kill(self) -> int:
        self.process.kill()
        return self.process.wait(KILL_TIMEOUT)

    def log_tail(self) -> str:
        """Return the last lines of the worker's log, for an error report."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError as exc:
            return f"cannot read the worker log {self.log_path}: {exc}"
        tail = "\n".join(lines[-LOG_TAIL_LINES:]) or "(empty)"
        return f"last lines of the worker log {self.log_path}:\n{tail}"
