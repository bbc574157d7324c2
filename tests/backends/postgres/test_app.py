"""The App on PostgreSQL: transactional enqueue through ``task.enqueue(connection=...)``."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from sluicegate import App, JobNotFound, JobState
from sluicegate.backends.postgres import parse_url
from sluicegate.errors import ConfigurationError


@pytest.fixture
def app(pg_url: str) -> Iterator[App]:
    application = App(pg_url)
    yield application
    application.close()


def test_enqueue_in_rolled_back_transaction(app: App, pg_url: str) -> None:
    send = app.task(lambda user_id: user_id, name="send")

    with (
        psycopg.connect(parse_url(pg_url).conninfo) as conn,
        conn.transaction(force_rollback=True),
    ):
        job = send.enqueue(7, connection=conn)

    with pytest.raises(JobNotFound):
        job.refresh()
    assert app.queue("default").stats().ready == 0


def test_enqueue_in_committed_transaction(app: App, pg_url: str) -> None:
    send = app.task(lambda user_id: user_id, name="send")

    with psycopg.connect(parse_url(pg_url).conninfo) as conn, conn.transaction():
        conn.execute("CREATE TEMP TABLE orders (id int)")
        jobs = send.enqueue_many([((1,), {}), ((2,), {})], connection=conn)
        conn.execute("INSERT INTO orders VALUES (1)")

    assert [job.status for job in jobs] == [JobState.QUEUED, JobState.QUEUED]
    assert app.queue("default").stats().ready == 2


def test_connection_needs_postgresql(tmp_path: object) -> None:
    app = App(f"sqlite:///{tmp_path}/jobs.db")
    send = app.task(lambda user_id: user_id, name="send")
    try:
        with pytest.raises(ConfigurationError) as caught:
            send.enqueue(1, connection=object())
    finally:
        app.close()

    assert "postgresql" in str(caught.value)
