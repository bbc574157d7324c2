"""The hiredis command packer sends the same bytes as redis-py's own packer."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from redis._parsers.encoders import Encoder
from redis.connection import PythonRespSerializer

from sluicegate.backends._redis_packer import HIREDIS, HiredisPacker

pytestmark = pytest.mark.skipif(not HIREDIS, reason="hiredis is not installed")

CASES: list[tuple[Any, ...]] = [
    ("EVALSHA", "0" * 40, 1, "{sg}:queues", "{sg}", "1764870000.125", 3600000, b"=\x00\xff"),
    ("HMGET", b"{sg}:j:id", "state", "attempts"),
    ("CLIENT SETINFO", "LIB-NAME", "redis-py"),
    ("SET", "key", "é", "PX", 60000),
    ("SET", "key", 0.1),
    ("SET", "key", -5),
    ("SET", "key", memoryview(b"view")),
    ("SET", "key", bytearray(b"array")),
]


def redis_py_bytes(args: tuple[Any, ...]) -> bytes:
    encoder = Encoder("utf-8", "strict", False)
    return b"".join(PythonRespSerializer(6000, encoder.encode).pack(*args))


@pytest.mark.parametrize("args", CASES, ids=[str(case[0]) for case in CASES])
def test_same_bytes_as_redis_py(args: tuple[Any, ...]) -> None:
    assert b"".join(HiredisPacker().pack(*args)) == redis_py_bytes(args)


def test_bool_rejected() -> None:
    with pytest.raises(redis.DataError, match="bool"):
        HiredisPacker().pack("SET", "key", True)


def test_client_uses_packer(redis_url: str) -> None:
    from sluicegate.backends.redis import RedisBackend

    backend = RedisBackend(redis_url)
    try:
        backend.ping()
        pool = backend._client.connection_pool
        connection = pool.get_connection()
        try:
            packer = connection._command_packer
        finally:
            pool.release(connection)
    finally:
        backend.close()

    assert isinstance(packer, HiredisPacker)
