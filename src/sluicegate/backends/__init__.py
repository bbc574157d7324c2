"""Backends by URL scheme, imported lazily so that a missing extra names its package."""

from __future__ import annotations

from typing import Any

from sluicegate.backends.base import Backend
from sluicegate.errors import UnsupportedBackend

#: Schemes planned for later releases; naming them gives a clearer error than "unknown".
PLANNED = ("amqp", "nats")


def open_backend(url: str, **options: Any) -> Backend:
    """Return the backend for ``url``, e.g. ``sqlite:///jobs.db``."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme == "sqlite":
        from sluicegate.backends.sqlite import SQLiteBackend, parse_path

        return SQLiteBackend(parse_path(url), **options)
    if scheme in ("redis", "rediss", "redis+sentinel", "redis+cluster", "rediss+cluster"):
        try:
            from sluicegate.backends.redis import RedisBackend
        except ImportError as exc:
            raise UnsupportedBackend(
                f"the {scheme}:// backend needs redis-py ({exc}); "
                "install it with: pip install 'sluicegate[redis]'"
            ) from None
        return RedisBackend(url, **options)
    if scheme in ("postgresql", "postgres"):
        try:
            from sluicegate.backends.postgres import PostgresBackend
        except ImportError as exc:
            raise UnsupportedBackend(
                f"the postgresql:// backend needs psycopg 3 and psycopg-pool ({exc}); "
                "install them with: pip install 'sluicegate[postgres]'"
            ) from None
        return PostgresBackend(url, **options)
    if scheme in PLANNED:
        raise UnsupportedBackend(
            f"the {scheme}:// backend is not available in this release; use sqlite:///path.db"
        )
    raise UnsupportedBackend(
        f"unsupported backend URL scheme {scheme!r} in {redact(url)!r}; expected sqlite:///path.db "
        "or redis://host:port/db or postgresql://user@host/dbname"
    )


def redact(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``, for logs and errors."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url
