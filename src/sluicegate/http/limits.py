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


class BodySizeLimit:
    """ASGI middleware that rejects request bodies over ``max_bytes`` with a JSON 413."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._reject(scope, send)
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _BodyTooLarge:
            if started:
                raise
            await self._reject(scope, send)

    async def _reject(self, scope: Scope, send: Send) -> None:
        logger.info("request body rejected path=%s limit_bytes=%d", scope["path"], self.max_bytes)
        body = orjson.dumps({"detail": _message(self.max_bytes)})
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class BodyReadTimeout:
    """ASGI middleware that returns 408 when a request body takes over ``timeout`` seconds.

    The time counts from when the server hands the request over, right after
    its headers, until the last chunk of the body arrives. Within that time
    the body may come in any number of chunks. Once the body is complete,
    ``receive`` is not bounded, so a streaming response can still wait for
    the client to disconnect.

    A response that starts before the whole body arrived (an early 401, 404
    or 408) carries ``Connection: close``. The server then closes the
    connection after the response, instead of reading a body that no one
    uses for as long as the client keeps sending it.
    """

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.timeout
        body_complete = not _has_body(scope)
        started = False

        async def timed_receive() -> Message:
            nonlocal body_complete
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
            if message["type"] != "http.request" or not message.get("more_body", False):
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
            await self.app(scope, timed_receive, closing_send)
        except _BodyTimedOut:
            if started:
                raise
            body = orjson.dumps({"detail": _timeout_message(self.timeout)})
            headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({"type": "http.response.start", "status": 408, "headers": headers})
            await send({"type": "http.response.body", "body": body})


def _timeout_message(timeout: float) -> str:
    return f"request body not received within {timeout:g} s; send the whole body without pausing"


def _has_body(scope: Scope) -> bool:
    """Return whether the request headers announce a body (a length above 0, or chunks)."""
    for name, value in scope["headers"]:
        if name == b"transfer-encoding":
            return True
        if name == b"content-length" and value.strip() not in (b"0", b""):
            return True
    return False


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


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
