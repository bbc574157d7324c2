"""Producers read the directory of wake-up sockets only when the listener generation changed."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conformance_backends import FakeClock, job

from sluicegate.backends import _wakeup
from sluicegate.backends.sqlite import SQLiteBackend
from sluicegate.broker import QueueBounds

BOUNDS = QueueBounds()
ENQUEUES = 30
WAKE_TIMEOUT = 5.0


@pytest.fixture
def producer(db_path: Path, clock: FakeClock) -> Iterator[SQLiteBackend]:
    opened = SQLiteBackend(str(db_path), clock=clock)
    yield opened
    opened.close()


def count_directory_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    reads: list[str] = []
    real_stat = os.stat

    def stat(path: str, *args: object, **kwargs: object) -> os.stat_result:
        reads.append(path)
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_wakeup.os, "stat", stat)
    return reads


def test_enqueues_without_listeners_read_no_directory(
    producer: SQLiteBackend, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    producer.enqueue_jobs([job(clock)], BOUNDS)
    reads = count_directory_reads(monkeypatch)
    started = time.monotonic()

    for _ in range(ENQUEUES):
        producer.enqueue_jobs([job(clock)], BOUNDS)

    elapsed = time.monotonic() - started
    # Only the fallback re-reads the directory, once per RELIST_INTERVAL.
    assert len(reads) <= 1 + elapsed / _wakeup.RELIST_INTERVAL


def test_new_listener_triggers_directory_read(
    backend: SQLiteBackend,
    producer: SQLiteBackend,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    producer.enqueue_jobs([job(clock)], BOUNDS)
    reads = count_directory_reads(monkeypatch)
    listener = backend.listener()
    try:
        producer.enqueue_jobs([job(clock)], BOUNDS)

        assert listener.wait(WAKE_TIMEOUT) is True
        assert reads
    finally:
        listener.close()


def test_listener_gone_is_dropped_from_targets(
    backend: SQLiteBackend, producer: SQLiteBackend, clock: FakeClock
) -> None:
    dead = backend.listener()
    staying = backend.listener()
    try:
        producer.enqueue_jobs([job(clock)], BOUNDS)
        assert staying.wait(WAKE_TIMEOUT) is True
        # A socket closed without removing its file, as by a killed worker.
        dead._socket.close()

        producer.enqueue_jobs([job(clock)], BOUNDS)

        assert staying.wait(WAKE_TIMEOUT) is True
        assert not os.path.exists(dead.path)
        assert dead.path not in producer._notifier._targets
    finally:
        staying.close()
        dead.close()
