"""Cross-process wake-up for the SQLite backend, over Unix datagram sockets.

SQLite has no notification channel, so an idle worker would have to poll the
database file. Instead each waiting worker binds a datagram socket in a
directory derived from the database's real path, and a producer sends one
byte to every socket there after each commit that adds ready messages. The
worker blocks in ``select`` on its socket, so it wakes within a millisecond
and burns no CPU while idle. A worker still polls at a long interval, so a
lost datagram (a full socket buffer, a socket another user cannot write)
delays work by at most that interval and never loses it.

Reading the directory costs a system call at every commit, which a producer
enqueueing one job at a time pays after each fdatasync, on cold caches. So
the SQLite backend keeps a listener generation in the database: a listener
that binds adds one to it, and an enqueue reads it in its own transaction.
:meth:`Notifier.notify_generation` reads the directory again only when the
generation changed, or :data:`RELIST_INTERVAL` seconds after it last did.
A listener binds before it adds to the generation and checks for work after,
so an enqueue either commits before that check or reads the new generation.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import tempfile
import threading
import time
import zlib

logger = logging.getLogger(__name__)

#: Tries to bind a socket while other listeners may remove the empty directory.
BIND_ATTEMPTS = 20

#: Nanoseconds after a directory change during which its listing is read again
#: at every notify, longer than any file system's timestamp granularity here.
RACY_LISTING_NS = 50_000_000

#: Seconds after which :meth:`Notifier.notify_generation` reads the directory
#: even if the generation did not change, for listeners that did not count
#: themselves in it (a process of an older sluicegate).
RELIST_INTERVAL = 1.0


def channel_dir(database_path: str) -> str:
    """Return the directory of wake-up sockets for one database file."""
    # Two checksums rather than hashlib, which would load OpenSSL into every worker.
    # Two paths that shared a name would only wake each other's workers needlessly.
    path = os.path.realpath(database_path).encode()
    digest = f"{zlib.crc32(path):08x}{zlib.adler32(path):08x}"
    return os.path.join(tempfile.gettempdir(), f"sluicegate-wake-{digest}")


class Notifier:
    """Send a wake-up datagram to every worker listening on one database."""

    def __init__(self, directory: str) -> None:
        self._directory = directory
        self._lock = threading.Lock()
        self._listing_mtime: int | None = None
        self._targets: list[str] = []
        self._generation: object = object()  # Equal to no generation read from a database.
        self._relist_at = 0.0
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.setblocking(False)

    def notify(self) -> None:
        """Wake every listener; never raises."""
        with self._lock:
            for target in self._current_targets():
                self._send(target)

    def notify_generation(self, generation: object) -> None:
        """Wake every listener, knowing the listener generation read at the commit.

        The directory is read only if ``generation`` differs from the last
        one seen, or :data:`RELIST_INTERVAL` has passed. Failed sends and
        directory reads are caught, as in :meth:`notify`.
        """
        with self._lock:
            now = time.monotonic()
            if generation != self._generation or now >= self._relist_at:
                self._generation, self._relist_at = generation, now + RELIST_INTERVAL
                targets = self._current_targets()
            else:
                targets = self._targets
            for target in targets:
                self._send(target)

    def close(self) -> None:
        self._socket.close()

    def _current_targets(self) -> list[str]:
        try:
            mtime = os.stat(self._directory).st_mtime_ns
        except OSError:
            self._listing_mtime, self._targets = None, []
            return self._targets
        # A directory's mtime has the file system's coarse granularity, so a
        # listener bound just after a listing may leave it unchanged: a listing
        # taken that recently is not trusted.
        recent = time.time_ns() - mtime < RACY_LISTING_NS
        if mtime != self._listing_mtime or recent:
            try:
                names = os.listdir(self._directory)
            except OSError:  # The last listener removed the directory meanwhile.
                self._listing_mtime, self._targets = None, []
                return self._targets
            self._listing_mtime = mtime
            self._targets = [os.path.join(self._directory, n) for n in names if n.endswith(".sock")]
        return self._targets

    def _send(self, target: str) -> None:
        try:
            self._socket.sendto(b"!", target)
        except (BlockingIOError, InterruptedError):
            pass  # The listener's buffer is full, so it has a wake-up pending already.
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                # The worker that bound this socket is gone; remove its file.
                with contextlib.suppress(OSError):
                    os.unlink(target)
                self._targets = [t for t in self._targets if t != target]
            else:
                logger.debug("wake-up send failed target=%s error=%s", target, exc)


class Listener:
    """A bound datagram socket that a waiting worker blocks on."""

    def __init__(self, directory: str) -> None:
        self._directory = directory
        self.path = os.path.join(directory, f"{os.getpid()}-{os.urandom(4).hex()}.sock")
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        for _ in range(BIND_ATTEMPTS):
            # Another process's last listener may remove the directory at any
            # moment, between any two of these steps; each race means try again.
            try:
                os.mkdir(directory, mode=0o777)
            except FileExistsError:
                pass
            except FileNotFoundError:
                os.makedirs(os.path.dirname(directory), exist_ok=True)
                continue
            with contextlib.suppress(OSError):
                os.chmod(directory, 0o1777)  # Producers of other users may wake us.
            try:
                self._socket.bind(self.path)
                break
            except FileNotFoundError:
                continue
        else:
            self._socket.close()
            raise OSError(f"cannot bind a wake-up socket in {directory}")
        self._socket.setblocking(False)

    def fileno(self) -> int:
        return self._socket.fileno()

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a wake-up; return whether one came."""
        readable, _, _ = select.select([self._socket], [], [], max(timeout, 0.0))
        if readable:
            self.drain()
        return bool(readable)

    def drain(self) -> None:
        """Discard pending wake-ups, so the next wait blocks until a new one."""
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while self._socket.recv(64):
                pass

    def close(self) -> None:
        self._socket.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.rmdir(self._directory)  # Only succeeds for the last listener.
