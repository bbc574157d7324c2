"""Fixtures for the PostgreSQL tests: a migrated schema of the test's own, dropped afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .support import drop_schema, migrate, require_postgres, schema_url


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The URL of a fresh, migrated schema in the test database."""
    require_postgres()
    url = schema_url()
    migrate(url)
    yield url
    drop_schema(url)


@pytest.fixture
def bare_pg_url() -> Iterator[str]:
    """The URL of a schema that does not exist yet; dropped afterwards if a test made it."""
    require_postgres()
    url = schema_url()
    yield url
    drop_schema(url)
