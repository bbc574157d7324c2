"""A private PostgreSQL cluster for tests that stop and restart the server.

It runs from a temporary data directory on a free loopback port, never the
shared server. PostgreSQL refuses to run as root, so under root every
command runs as the ``postgres`` system user through ``runuser``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

#: Seconds ``pg_ctl`` may take to start, stop or restart the server.
PG_CTL_TIMEOUT = 60

#: Seconds ``initdb`` may take.
INITDB_TIMEOUT = 120


class ClusterUnavailable(Exception):
    """A private cluster cannot be started here; its message gives the reason."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def find_binaries() -> Path:
    """Return the newest ``/usr/lib/postgresql/*/bin`` that has initdb and pg_ctl."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda path: int(path.split("/")[-2])
    )
    for directory in reversed(candidates):
        if os.access(os.path.join(directory, "pg_ctl"), os.X_OK):
            return Path(directory)
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    raise ClusterUnavailable("no initdb/pg_ctl found under /usr/lib/postgresql/*/bin or on PATH")


class PrivateCluster:
    """A PostgreSQL server in ``directory`` on 127.0.0.1:``port``, with trust authentication."""

    def __init__(self, directory: Path) -> None:
        self.binaries = find_binaries()
        self.directory = directory
        self.data = directory / "data"
        self.port = free_port()
        self.user = "sgtest"
        self._prefix: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                raise ClusterUnavailable("running as root and runuser is missing")
            self._prefix = ["runuser", "-u", "postgres", "--"]
            directory.mkdir(parents=True, exist_ok=True)
            shutil.chown(directory, "postgres", "postgres")

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = PG_CTL_TIMEOUT) -> None:
        command = [*self._prefix, *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise ClusterUnavailable(
                f"{' '.join(args[:2])} failed with {result.returncode}: "
                f"{(result.stderr or result.stdout)[-2000:]}"
            )

    def init(self) -> None:
        self._run(
            str(self.binaries / "initdb"),
            "--pgdata",
            str(self.data),
            "--username",
            self.user,
            "--auth",
            "trust",
            "--no-sync",
            "--encoding",
            "UTF8",
            timeout=INITDB_TIMEOUT,
        )

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory} -c fsync=off"
        self._pg_ctl("start", "-o", options, "-l", str(self.directory / "server.log"))

    def restart(self) -> None:
        """Stop the server cleanly (``-m fast``, which cuts every session) and start it again.

        ``pg_ctl restart`` is not used: it gives the new server the command's
        stdout, so a caller capturing that output would wait for it forever.
        """
        self._pg_ctl("stop", "-m", "fast")
        self.start()

    def stop(self) -> None:
        """Stop the server at once, then SIGKILL the postmaster by pid if it is still there."""
        with contextlib.suppress(ClusterUnavailable, subprocess.TimeoutExpired):
            self._pg_ctl("stop", "-m", "immediate")
        pid = self.postmaster_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def postmaster_pid(self) -> int | None:
        pid_file = self.data / "postmaster.pid"
        try:
            return int(pid_file.read_text().splitlines()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None

    def _pg_ctl(self, action: str, *args: str) -> None:
        pg_ctl = str(self.binaries / "pg_ctl")
        self._run(pg_ctl, action, "-D", str(self.data), "-w", "-t", str(PG_CTL_TIMEOUT), *args)

    def server_log(self) -> str:
        path = self.directory / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""
