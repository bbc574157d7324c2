"""A small HTTP/1.1 client for the open-loop phase of http_enqueue.py.

httpx costs about 1 ms of CPU per request in the benchmark process, and
more once requests wait in its connection pool, which scans its connections
at every request. At a few hundred requests/s that made the load generator,
not the server, late. This client writes each request as bytes on a
keep-alive connection and reads back the status line, the headers and a
body of ``Content-Length`` bytes, which is all that uvicorn sends for these
routes. It does not handle chunked responses, redirects or TLS.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

#: Seconds a connection may stay idle and still be reused. uvicorn closes an idle
#: keep-alive connection after 5 s (`sluicegate serve` and the baseline alike).
MAX_IDLE_S = 4.0


@dataclass(eq=False)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    last_used: float


class KeepAliveClient:
    """Posts to one server over at most ``max_connections`` keep-alive connections.

    Each connection carries one request at a time. A request takes the idle
    connection used last, or opens a new one while fewer than
    ``max_connections`` exist. Otherwise it waits until a connection is free.
    """

    def __init__(self, base_url: str, max_connections: int, timeout: float) -> None:
        url = urlsplit(base_url)
        if url.scheme != "http" or url.hostname is None or url.port is None:
            raise ValueError(f"expected http://HOST:PORT, got {base_url!r}")
        self.host = url.hostname
        self.port = url.port
        self.timeout = timeout
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()

    async def post_json(self, path: str, body: bytes) -> int:
        """Send ``POST path`` with a JSON ``body``; return the response's status code."""
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        async with self._slots:
            connection = await self._acquire()
            try:
                async with asyncio.timeout(self.timeout):
                    status, keep_alive = await _exchange(connection, head.encode() + body)
            except BaseException:
                self._close(connection)
                raise
            if keep_alive:
                connection.last_used = time.perf_counter()
                self._idle.append(connection)
            else:
                self._close(connection)
            return status

    async def aclose(self) -> None:
        """Close every connection."""
        for connection in list(self._open):
            self._close(connection)
        self._idle.clear()

    async def _acquire(self) -> _Connection:
        now = time.perf_counter()
        while self._idle:
            connection = self._idle.pop()
            if now - connection.last_used < MAX_IDLE_S:
                return connection
            self._close(connection)
        async with asyncio.timeout(self.timeout):
            reader, writer = await asyncio.open_connection(self.host, self.port)
        connection = _Connection(reader, writer, now)
        self._open.add(connection)
        return connection

    def _close(self, connection: _Connection) -> None:
        connection.writer.close()
        self._open.discard(connection)


async def _exchange(connection: _Connection, request: bytes) -> tuple[int, bool]:
    """Write one request and read its response; return the status and whether to keep alive."""
    connection.writer.write(request)
    await connection.writer.drain()
    head = await connection.reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head[:-4].split(b"\r\n")
    status = int(status_line.split(b" ", 2)[1])
    length = 0
    keep_alive = True
    for line in header_lines:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            keep_alive = False
    await connection.reader.readexactly(length)
    return status, keep_alive
