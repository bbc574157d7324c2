"""Lost connections: the backend retries, logs the reconnection and loses no write.

The test terminates only the connections that carry its own
``application_name``, so other users of the shared test server are untouched.
"""

from __future__ import annotations

import logging
import select
import uuid
from collections.abc import Iterator

import pytest

from sluicegate.backends.postgres import PostgresBackend, parse_url
from sluicegate.broker import QueueBounds
from sluicegate.message import OutgoingMessage, new_id
from sluicegate.store import NewJob
from worker.support import wait_until

from .support import drop_schema, migrate, require_postgres, schema_url, sql_rows

#: Upper bound, in seconds, on waiting for a wake-up that should come at once.
WAKE_TIMEOUT = 5.0


@pytest.fixture
def tagged_url() -> Iterator[str]:
    """A migrated schema whose URL tags every connection with a unique application_name."""
    require_postgres()
    url = schema_url(application_name=f"sgtest{uuid.uuid4().hex[:10]}")
    migrate(url)
    yield url
    drop_schema(url)


def terminate_connections(url: str) -> int:
    """Terminate every server connection opened with ``url``'s application_name."""
    name = parse_url(url).conninfo.rsplit("application_name=", 1)[1]
    rows = sql_rows(
        url,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = %s AND pid <> pg_backend_pid()",
        [name],
    )
    return int(rows[0][0])


def new_job(queue: str = "q") -> NewJob:
    import time

    now = time.time()
    return NewJob(OutgoingMessage(new_id(), queue, b"{}", 0, now, now), "tests.task")


def test_operation_retried_after_kill(tagged_url: str, caplog: pytest.LogCaptureFixture) -> None:
    backend = PostgresBackend(tagged_url)
    try:
        backend.enqueue_jobs([new_job()], QueueBounds())
        assert terminate_connections(tagged_url) >= 1

        with caplog.at_level(logging.INFO, logger="sluicegate.backends.postgres"):
            backend.enqueue_jobs([new_job()], QueueBounds())
        deliveries = backend.reserve(["q"], 10, 30.0, "w1")
    finally:
        backend.close()

    assert len(deliveries) == 2
    assert "postgresql connection restored" in caplog.text
    assert "password" not in caplog.text


def test_listener_reconnects(tagged_url: str, caplog: pytest.LogCaptureFixture) -> None:
    backend = PostgresBackend(tagged_url)
    producer = PostgresBackend(tagged_url)
    listener = backend.listener()
    try:
        with caplog.at_level(logging.INFO, logger="sluicegate.backends._pg_notify"):
            assert terminate_connections(tagged_url) >= 1
            # Every waiter is woken once after the loss, as notifications may be lost.
            assert select.select([listener.fileno()], [], [], WAKE_TIMEOUT)[0]
            wait_until(lambda: "listen connection restored" in caplog.text, 10, "reconnection")
            listener.drain()
            producer.enqueue_jobs([new_job()], QueueBounds())

            woken = listener.wait(WAKE_TIMEOUT)
    finally:
        listener.close()
        producer.close()
        backend.close()

    assert woken is True
    assert "listen connection lost" in caplog.text
