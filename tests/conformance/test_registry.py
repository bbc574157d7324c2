"""The backend registry's check for a missing server."""

from __future__ import annotations

import socket

import pytest
from conformance_backends import BackendUnavailable, require_server


def unused_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_require_server_missing() -> None:
    port = unused_loopback_port()

    with pytest.raises(BackendUnavailable) as caught:
        require_server("redis", "127.0.0.1", port)

    assert "redis" in str(caught.value)
    assert str(port) in str(caught.value)


def test_require_server_listening() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]

        require_server("redis", "127.0.0.1", port)
