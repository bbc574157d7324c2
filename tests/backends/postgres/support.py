"""Helpers for the PostgreSQL tests: private schemas, app modules on a PostgreSQL URL.

Every schema is named ``sg_test_<random>`` and dropped by the test that made
it. ``POSTGRES_URL`` (from ``SLUICEGATE_TEST_POSTGRES_URL``) names the shared
test database; a test needing its own server starts a private cluster instead.
"""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from sluicegate.backends.postgres import PostgresBackend, parse_url
from worker.support import APP_HEADER, AppModule

#: Database of the PostgreSQL tests; each test works in a schema of its own.
POSTGRES_URL = os.environ.get("SLUICEGATE_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")


def require_postgres(url: str = POSTGRES_URL) -> None:
    """Skip the test when the server rejects connections, or fail it when ``CI`` is set."""
    import psycopg

    try:
        with psycopg.connect(parse_url(url).conninfo, connect_timeout=2):
            pass
    except psycopg.OperationalError as exc:
        message = f"postgresql server at {parse_url(url).redacted} unavailable: {exc}"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI runs every backend")
        pytest.skip(message)


def schema_url(base_url: str = POSTGRES_URL, **params: str) -> str:
    """Return ``base_url`` with a fresh ``sg_test_`` schema and extra query parameters."""
    query = {"schema": f"sg_test_{uuid.uuid4().hex[:12]}", **params}
    separator = "&" if "?" in base_url else "?"
    return base_url + separator + "&".join(f"{key}={value}" for key, value in query.items())


def migrate(url: str) -> None:
    backend = PostgresBackend(url)
    try:
        backend.migrate()
    finally:
        backend.close()


def drop_schema(url: str) -> None:
    """Drop the test schema of ``url`` with its tables; only ``sg_test_`` schemas."""
    import psycopg
    from psycopg import sql

    parsed = parse_url(url)
    assert parsed.schema.startswith("sg_test_"), f"refusing to drop schema {parsed.schema!r}"
    with psycopg.connect(parsed.conninfo, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(parsed.schema))
        )


def write_app_module(directory: Path, source: str, lease: float, url: str) -> AppModule:
    """Write an app module on ``url`` with the worker tests' header and ``source``; import it."""
    name = f"tasks_{uuid.uuid4().hex[:12]}"
    text = APP_HEADER.format(log_path=str(directory / "events.log"), url=url, lease=lease)
    (directory / f"{name}.py").write_text(text + textwrap.dedent(source))
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    module = importlib.import_module(name)
    return AppModule(name, directory, module)


def sql_rows(url: str, query: str, params: Any = ()) -> list[Any]:
    """Run one query with the test schema first on the search path."""
    import psycopg

    parsed = parse_url(url)
    with psycopg.connect(parsed.conninfo, autocommit=True) as conn:
        conn.execute("SELECT set_config('search_path', %s, false)", [parsed.schema])
        cursor = conn.execute(query, params)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description is not None else []
