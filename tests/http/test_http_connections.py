"""What only a real server shows: HEAD probes, the body read timeout, connection closing.

One ``sluicegate serve`` with tokens and a 0.5 s body timeout serves every
test of this module. The slow clients are raw sockets on loopback.
"""

from __future__ import annotations

import select
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from http_support import Deployment

from sluicegate.backends._wakeup import channel_dir
from sluicegate.cli import serve
from sluicegate.http import api

#: The server's ``--body-timeout``, in seconds.
BODY_TIMEOUT = 0.5

#: Seconds between two bytes of a trickled body: well under BODY_TIMEOUT.
TRICKLE_INTERVAL = 0.2

#: Seconds a socket waits for the server before the test fails.
SOCKET_TIMEOUT = 10.0

TOKEN = "c0nn-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    deployment = Deployment(tmp_path_factory.mktemp("connections"))
    try:
        deployment.serve(
            "--body-timeout", str(BODY_TIMEOUT), env={"SLUICEGATE_API_TOKENS": f"{TOKEN}:write"}
        )
        yield deployment
    finally:
        deployment.kill_all()
        directory = channel_dir(str(deployment.db_path))
        for path in (directory, directory + "-results"):
            shutil.rmtree(path, ignore_errors=True)


def connect(server: Deployment) -> socket.socket:
    url = urlsplit(server.base_url)
    assert url.hostname is not None and url.port is not None
    return socket.create_connection((url.hostname, url.port), timeout=SOCKET_TIMEOUT)


def request_head(headers: dict[str, str]) -> bytes:
    """Return the request line and headers of a POST that enqueues a job."""
    lines = ["POST /v1/queues/default/jobs HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_until_closed(sock: socket.socket) -> bytes:
    """Read until the server closes the connection; fail after ``SOCKET_TIMEOUT``."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def status_and_headers(response: bytes) -> tuple[int, str]:
    head, _, _ = response.partition(b"\r\n\r\n")
    status_line, _, headers = head.decode().partition("\r\n")
    return int(status_line.split()[1]), headers.lower()


def add_body(server: Deployment) -> bytes:
    return f'{{"task": "{server.module}.add", "args": [1, 2]}}'.encode()


def test_stalled_body_gets_408(server: Deployment) -> None:
    body = add_body(server)
    headers = {**AUTH, "Content-Type": "application/json", "Content-Length": str(len(body))}
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(request_head(headers) + body[:10])
        response = read_until_closed(sock)
        elapsed = time.monotonic() - started
    status, response_headers = status_and_headers(response)
    assert status == 408
    assert "connection: close" in response_headers
    assert b"request body not received within 0.5 s" in response
    assert elapsed >= BODY_TIMEOUT


def test_trickled_body_gets_408(server: Deployment) -> None:
    body = add_body(server) + b" " * 1000  # Far more bytes than the trickle sends in time.
    headers = {**AUTH, "Content-Type": "application/json", "Content-Length": str(len(body))}
    with connect(server) as sock:
        sock.sendall(request_head(headers))
        sent = 0
        deadline = time.monotonic() + SOCKET_TIMEOUT
        # One byte per TRICKLE_INTERVAL, never idle for the timeout, until the server responds.
        # A byte sent after the response gets no reset: the server closes with a lingering
        # close (test_closing_connection_reads_on).
        while not select.select([sock], [], [], TRICKLE_INTERVAL)[0]:
            assert time.monotonic() < deadline, "no response to a trickled body"
            sock.sendall(body[sent : sent + 1])
            sent += 1
        response = read_until_closed(sock)
    assert status_and_headers(response)[0] == 408
    assert sent < len(body)


def test_stalled_chunked_body_gets_408(server: Deployment) -> None:
    headers = {**AUTH, "Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    with connect(server) as sock:
        sock.sendall(request_head(headers) + b"20\r\n" + add_body(server)[:8])
        response = read_until_closed(sock)
    assert status_and_headers(response)[0] == 408


def test_body_in_pieces_accepted(server: Deployment) -> None:
    body = add_body(server)
    headers = {**AUTH, "Content-Type": "application/json", "Content-Length": str(len(body))}
    with connect(server) as sock:
        sock.sendall(request_head({**headers, "Connection": "close"}))
        for start in range(0, len(body), 7):
            sock.sendall(body[start : start + 7])
        response = read_until_closed(sock)
    assert status_and_headers(response)[0] == 202


def test_early_response_closes_connection(server: Deployment) -> None:
    # 401 comes before the body is read, so the server closes instead of reading it.
    headers = {"Content-Type": "application/json", "Content-Length": "100"}
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(request_head(headers) + b'{"task"')
        response = read_until_closed(sock)
        elapsed = time.monotonic() - started
    status, response_headers = status_and_headers(response)
    assert status == 401
    assert "connection: close" in response_headers
    assert elapsed < SOCKET_TIMEOUT


def test_closing_connection_reads_on(server: Deployment) -> None:
    # After an early response the server half-closes and reads on for a while, so bytes the
    # client sends after it get no reset, which could discard the response.
    headers = {"Content-Type": "application/json", "Content-Length": "100000"}
    with connect(server) as sock:
        sock.sendall(request_head(headers) + b'{"task"')
        response = read_until_closed(sock)
        sock.sendall(b" " * 1000)
        select.select([sock], [], [], 0.5)  # A reset from a closed socket would come now.
        sock.sendall(b" " * 1000)
        assert sock.recv(1) == b""
    assert status_and_headers(response)[0] == 401


def test_complete_request_keeps_connection(server: Deployment) -> None:
    with httpx.Client(base_url=server.base_url, headers=AUTH) as client:
        url = "/v1/queues/default/jobs"
        first = client.post(url, json={"task": f"{server.module}.add", "args": [1, 2]})
        second = client.post(url, json={"task": f"{server.module}.add", "args": [3, 4]})
    assert first.status_code == 202
    assert second.status_code == 202
    assert "connection" not in first.headers
    assert "connection" not in second.headers


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_head_probe_like_get(server: Deployment, path: str) -> None:
    got = httpx.get(f"{server.base_url}{path}")
    head = httpx.head(f"{server.base_url}{path}")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.headers["content-length"] == str(len(got.content))


def test_serve_default_matches_api() -> None:
    assert serve.DEFAULT_BODY_TIMEOUT == api.DEFAULT_BODY_TIMEOUT


def test_body_timeout_option_rejects_zero(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path)
    process = deployment.start(["serve", deployment.spec, "--port", "0", "--body-timeout", "0"])
    assert process.process.wait(60) == 2
    assert "--body-timeout" in process.log()
