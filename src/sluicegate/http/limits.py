"""A cap on request bodies, enforced while the body streams in.

A request whose ``Content-Length`` exceeds the cap gets 413 before any of
its body is read. A request without one (chunked) is counted chunk by
chunk, and reading stops with 413 as soon as the count passes the cap, so
an oversized body is never held in memory whole.
"""

from __future__ import annotations

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
