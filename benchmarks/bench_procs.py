"""Start, measure and stop the worker processes that the benchmark spawns.

Every process is stopped by its own pid, and every wait here has a time limit.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

STOP_TIMEOUT_S = 10.0


class WorkerProcess:
    """A worker command running as a child process, with its output in a log file."""

    def __init__(self, command: Sequence[str], env: dict[str, str], cwd: Path, log_path: Path):
        self.command = list(command)
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.started_at = time.perf_counter()
        self.popen = subprocess.Popen(
            self.command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.popen.pid
        self._process = psutil.Process(self.pid)
        # Children are remembered as they are seen, so that stop() can reach a child even
        # after the parent has exited and the child has been re-parented.
        self._known_children: dict[int, psutil.Process] = {}

    def tree(self) -> list[psutil.Process]:
        """Return the worker process and all of its live descendants."""
        processes = [self._process]
        try:
            children = self._process.children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        for child in children:
            self._known_children.setdefault(child.pid, child)
        processes.extend(children)
        return processes

    def rss_bytes(self) -> int:
        """Return the resident set size summed over the process tree, in bytes."""
        total = 0
        for process in self.tree():
            try:
                total += process.memory_info().rss
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
        return total

    def cpu_seconds(self) -> dict[int, float]:
        """Return user plus system CPU seconds of each live process in the tree, by pid."""
        seconds: dict[int, float] = {}
        for process in self.tree():
            try:
                times = process.cpu_times()
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            seconds[process.pid] = times.user + times.system
        return seconds

    def check_running(self) -> None:
        """Raise RuntimeError with the end of the worker log if the worker has exited."""
        code = self.popen.poll()
        if code is not None:
            raise RuntimeError(
                f"worker exited with code {code}: {' '.join(self.command)}\n"
                f"last lines of {self.log_path}:\n{self.log_tail()}"
            )

    def log_tail(self, max_lines: int = 30) -> str:
        self._log.flush()
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError as exc:
            return f"(log not readable: {exc})"
        return "\n".join(lines[-max_lines:])

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Send SIGTERM to the worker and its children, then SIGKILL what is left after timeout."""
        self.tree()
        targets = [self._process, *self._known_children.values()]
        for process in targets:
            try:
                process.terminate()
            except psutil.NoSuchProcess:
                continue
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=timeout)
        _, alive = psutil.wait_procs(targets, timeout=timeout)
        for process in alive:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                continue
        psutil.wait_procs(alive, timeout=timeout)
        self._log.close()


def worker_env(pythonpath: Path) -> dict[str, str]:
    """Return the current environment with pythonpath put first on PYTHONPATH."""
    env = dict(os.environ)
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(pythonpath) if not existing else f"{pythonpath}{os.pathsep}{existing}"
    return env


class PeakRssSampler:
    """A background thread that records the peak RSS of a worker tree every interval seconds."""

    def __init__(self, worker: WorkerProcess, interval: float = 0.1):
        self.worker = worker
        self.interval = interval
        self.peak_bytes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> PeakRssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self.worker.rss_bytes()
            self.peak_bytes = max(self.peak_bytes, rss)
            self.samples += 1
            self._stop.wait(self.interval)


def wait_for(
    condition: Callable[[], bool],
    timeout: float,
    interval: float,
    description: str,
    worker: WorkerProcess | None = None,
) -> float:
    """Poll condition every interval seconds and return the perf_counter time it became true.

    Raises TimeoutError after timeout seconds, and RuntimeError if worker exits first.
    """
    deadline = time.perf_counter() + timeout
    while True:
        if condition():
            return time.perf_counter()
        if worker is not None:
            worker.check_running()
        if time.perf_counter() >= deadline:
            tail = f"\nlast lines of the worker log:\n{worker.log_tail()}" if worker else ""
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {description}{tail}")
        time.sleep(interval)
