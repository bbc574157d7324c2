"""Schema migrations: nothing changes the schema except ``sluicegate migrate``."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from sluicegate import App
from sluicegate.backends.postgres import PostgresBackend
from sluicegate.backends.postgres_schema import SCHEMA_VERSION, SchemaNotReady
from sluicegate.cli.main import cli

from .support import sql_rows


def test_missing_schema_names_migrate(bare_pg_url: str) -> None:
    app = App(bare_pg_url)
    try:
        with pytest.raises(SchemaNotReady) as caught:
            app.backend.get_job("00000000-0000-7000-8000-000000000000")
    finally:
        app.close()

    assert "missing" in str(caught.value)
    assert "sluicegate migrate" in str(caught.value)


def test_app_start_creates_nothing(bare_pg_url: str) -> None:
    App(bare_pg_url).close()
    schema = bare_pg_url.rsplit("schema=", 1)[1]

    rows = sql_rows(bare_pg_url, "SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema])

    assert rows == []


def test_migrate_then_current(bare_pg_url: str) -> None:
    backend = PostgresBackend(bare_pg_url)
    try:
        before = backend.schema_version()
        applied = backend.migrate()
        again = backend.migrate()
        after = backend.schema_version()
        backend.ping()
    finally:
        backend.close()

    assert before == (0, SCHEMA_VERSION)
    assert applied == list(range(1, SCHEMA_VERSION + 1))
    assert again == []
    assert after == (SCHEMA_VERSION, SCHEMA_VERSION)


def test_newer_schema_rejected(pg_url: str) -> None:
    sql_rows(
        pg_url,
        "INSERT INTO schema_migrations (version, description) VALUES (%s, 'from the future')",
        [SCHEMA_VERSION + 1],
    )
    backend = PostgresBackend(pg_url)
    try:
        with pytest.raises(SchemaNotReady) as caught:
            backend.ping()
    finally:
        backend.close()

    assert "upgrade sluicegate" in str(caught.value)


def test_migrate_command(bare_pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = tmp_path / "migrate_app.py"
    module.write_text(f"import sluicegate\napp = sluicegate.App({bare_pg_url!r})\n")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    check_before = runner.invoke(cli, ["migrate", "migrate_app:app", "--check"])
    first = runner.invoke(cli, ["migrate", "migrate_app:app"])
    second = runner.invoke(cli, ["migrate", "migrate_app:app"])
    check_after = runner.invoke(cli, ["migrate", "migrate_app:app", "--check"])

    assert check_before.exit_code == 1
    assert "version 0" in check_before.output
    assert first.exit_code == 0, first.output
    assert f"to {SCHEMA_VERSION}" in first.output
    assert "nothing to migrate" in second.output
    assert check_after.exit_code == 0
    assert "current" in check_after.output
