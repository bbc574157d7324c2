"""Caps on request bodies, enforced while the body streams in: size and read time.

A request whose ``Content-Length`` exceeds the size cap gets 413 before any
of its body is read. A request without one (chunked) is counted chunk by
chunk, and reading stops with 413 as soon as the count passes the cap, so
an oversized body is never held in memory whole.

A body that has not arrived whole within the read timeout gets 408, so a
client that sends its headers and then trickles its body, or stops, does
not hold a connection and a handler indefinitely.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)


class _BodyTooLarge(HTTPException):
    """Raised inside ``receive`` once the body passes the cap.

    It is an ``HTTPException`` so that FastAPI's body parsing lets it through
    (it turns other errors into 400) and its exception handler returns 413.
    """

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, _message(max_bytes))


class _BodyTimedOut(HTTPException):
    """Raised inside ``receive`` once the body is overdue; FastAPI lets it through like 413."""

    def __init__(self, timeout: float) -> None:
        super().__init__(408, _timeout_message(timeout))


class BodyLimits:
    """ASGI middleware that caps a request body's size (413) and the time to receive it (408).

    Size: a body over ``max_bytes``, by its ``Content-Length`` or by the bytes
    counted so far, gets a JSON 413.

    Time: the body must arrive whole within ``timeout`` seconds, counted from
    when the server hands the request over, right after its headers. Within
    that time the body may come in any number of chunks. Once the body is
    complete, ``receive`` is not bounded, so a streaming response can still
    wait for the client to disconnect. A late body gets a JSON 408.

    A response that starts before the whole body arrived (an early 401, 404,
    408 or 413) carries ``Connection: close``. The server then closes the
    connection after the response, instead of reading a body that no one
    uses for as long as the client keeps sending it.

    Both caps live in one middleware because each pure ASGI middleware wraps
    ``receive`` and ``send`` of every request once more.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared, has_body = _body_headers(scope)
        if declared is not None and declared > self.max_bytes:
            await self._reject_too_large(scope, send)
            return
        deadline = asyncio.get_running_loop().time() + self.timeout
        body_complete = not has_body
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal body_complete, received
            if body_complete:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                logger.info(
                    "request body timed out path=%s client=%s timeout_s=%g",
                    scope["path"],
                    _client(scope),
                    self.timeout,
                )
                raise _BodyTimedOut(self.timeout) from None
            if message["type"] != "http.request":
                body_complete = True
                return message
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise _BodyTooLarge(self.max_bytes)
            if not message.get("more_body", False):
                body_complete = True
            return message

        async def closing_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if not body_complete:
                    message = _with_connection_close(message)
            await send(message)

        try:
            await self.app(scope, limited_receive, closing_send)
        except _BodyTooLarge:
            if started:
                raise
            await self._reject_too_large(scope, send)
        except _BodyTimedOut:
            if started:
                raise
            await _send_closing_error(send, 408, _timeout_message(self.timeout))

    async def _reject_too_large(self, scope: Scope, send: Send) -> None:
        logger.info("request body rejected path=%s limit_bytes=%d", scope["path"], self.max_bytes)
        await _send_closing_error(send, 413, _message(self.max_bytes))


async def _send_closing_error(send: Send, status: int, detail: str) -> None:
    """Send a JSON ``{"detail": ...}`` response with ``Connection: close``."""
    body = orjson.dumps({"detail": detail})
    headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _timeout_message(timeout: float) -> str:
    return f"request body not received within {timeout:g} s; send the whole body without pausing"


def _with_connection_close(message: Message) -> Message:
    headers = list(message.get("headers", []))
    if not any(name.lower() == b"connection" for name, _ in headers):
        headers.append((b"connection", b"close"))
    return {**message, "headers": headers}


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"


def _message(max_bytes: int) -> str:
    return f"request body is over the limit of {max_bytes} bytes"


def _body_headers(scope: Scope) -> tuple[int | None, bool]:
    """Return the ``Content-Length`` (None if absent or invalid) and whether a body comes.

    A body comes with a length above 0 or with ``Transfer-Encoding`` (chunks).
    """
    declared = None
    has_body = False
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                declared = None
            if value.strip() not in (b"0", b""):
                has_body = True
        elif name == b"transfer-encoding":
            has_body = True
    return declared, has_body
