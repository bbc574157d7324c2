"""Lingering close for the API server: a closing connection reads on before it ends.

When the server responds early and closes (413, 408, 401 before the body
arrived), the client may still be sending. If the server's socket is closed
with unread bytes, or bytes arrive after it closed, its kernel responds with a
TCP reset, and the client's kernel can then discard the response it had
already received. The client sees "connection reset" instead of the error.

:class:`LingeringH11Protocol` is uvicorn's h11 protocol with one change: its
transport's ``close()`` sends the pending response, shuts down the write
side (FIN), and goes on reading and discarding what the client sends until
the client closes or ``LINGER_SECONDS`` pass. Then the socket closes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

#: Seconds a closing connection keeps reading before it closes at last.
LINGER_SECONDS = 2.0


class LingeringTransport:
    """A transport whose ``close()`` half-closes and drains before it closes."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.lingering = False

    def close(self) -> None:
        if self.lingering or self._transport.is_closing():
            return
        if not self._transport.can_write_eof():
            self._transport.close()
            return
        self.lingering = True
        self._transport.write_eof()  # After the buffered response is sent.
        self._transport.resume_reading()  # Drain, or unread bytes would reset the peer.
        asyncio.get_running_loop().call_later(LINGER_SECONDS, self._transport.close)

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class LingeringH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing its connections with a lingering close."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(LingeringTransport(transport))  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if isinstance(transport, LingeringTransport) and transport.lingering:
            return  # Read only to keep the socket's receive buffer empty.
        super().data_received(data)
