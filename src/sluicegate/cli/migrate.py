"""``sluicegate migrate``: create or upgrade the database schema of the app's backend."""

from __future__ import annotations

import click

from sluicegate.backends import open_backend, redact
from sluicegate.backends.base import Migratable
from sluicegate.cli._common import import_app, user_errors


@click.command()
@click.argument("app_spec", metavar="APP_MODULE:APP")
@click.option(
    "--check",
    is_flag=True,
    help="Only compare the schema's version with the one this sluicegate needs; "
    "exit with status 1 if they differ.",
)
@user_errors
def migrate(app_spec: str, check: bool) -> None:
    """Create or upgrade the schema of APP_MODULE:APP's backend (PostgreSQL).

    Workers and apps never change the schema themselves; run this once
    after installing or upgrading sluicegate. Concurrent runs are safe.
    """
    app = import_app(app_spec)
    backend = open_backend(app.url, durable=True)
    try:
        if not isinstance(backend, Migratable):
            click.echo(f"{redact(app.url)} creates its schema itself; nothing to migrate")
            return
        current, needed = backend.schema_version()
        if check:
            if current != needed:
                raise click.ClickException(
                    f"schema is at version {current}, this sluicegate needs {needed}; "
                    "run `sluicegate migrate` without --check"
                )
            click.echo(f"schema is current (version {current})")
            return
        applied = backend.migrate()
    finally:
        backend.close()
    if applied:
        versions = ", ".join(str(version) for version in applied)
        click.echo(
            f"migrated {redact(app.url)} from version {current} to {applied[-1]} ({versions})"
        )
    else:
        click.echo(f"schema is current (version {current}); nothing to migrate")
