"""The client's retries: backoff, Retry-After, deadlines and one idempotency key."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from sluicegate import Backoff, Client, QueueFull, Unavailable
from sluicegate.http.client import ApiError

FAST = Backoff(base=0.01, cap=0.05)

JOB = {
    "id": "j1",
    "task": "t",
    "queue": "q",
    "state": "queued",
    "attempts": 0,
    "result": None,
    "error": None,
    "version": 1,
}

FULL = {"detail": "full", "queue": "q", "reason": "max_length", "limit": 10, "retry_after": 0.5}


def client_for(handler: httpx.MockTransport, **options: float) -> Client:
    return Client("http://test", transport=handler, backoff=FAST, **options)  # type: ignore[arg-type]


def test_retry_keeps_idempotency_key() -> None:
    keys = []

    def handle(request: httpx.Request) -> httpx.Response:
        keys.append(httpx.Response(200, content=request.content).json()["idempotency_key"])
        if len(keys) == 1:
            raise httpx.ReadTimeout("response lost", request=request)
        return httpx.Response(202, json=JOB)

    with client_for(httpx.MockTransport(handle)) as client:
        assert client.enqueue("q", "t").id == "j1"
    assert len(keys) == 2
    assert keys[0] == keys[1]


def test_waits_at_least_retry_after() -> None:
    calls = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        if len(calls) == 1:
            return httpx.Response(503, json=FULL, headers={"Retry-After": "1"})
        return httpx.Response(202, json=JOB)

    with client_for(httpx.MockTransport(handle)) as client:
        client.enqueue("q", "t")
    assert calls[1] - calls[0] >= 1.0


def test_gives_up_with_queue_full() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json=FULL, headers={"Retry-After": "1"})

    client = client_for(httpx.MockTransport(handle), max_elapsed=0.5)
    with client, pytest.raises(QueueFull) as raised:
        client.enqueue("q", "t")
    assert raised.value.queue == "q"
    assert raised.value.limit == 10


def test_gives_up_with_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # Closed below: nothing listens there.
    started = time.monotonic()
    client = Client(f"http://127.0.0.1:{port}", max_elapsed=0.5, backoff=FAST)
    with client, pytest.raises(Unavailable):
        client.job("j1")
    assert time.monotonic() - started < 5


def test_rejection_is_not_retried() -> None:
    calls = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(422, json={"detail": [{"loc": ["body", "task"], "msg": "no"}]})

    with client_for(httpx.MockTransport(handle)) as client, pytest.raises(ApiError) as raised:
        client.enqueue("q", "t")
    assert raised.value.status_code == 422
    assert len(calls) == 1
