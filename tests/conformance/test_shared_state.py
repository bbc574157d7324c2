"""Locks and compare-and-set values that schedulers and breakers share."""

from __future__ import annotations

from collections.abc import Callable

from conformance_backends import FakeClock

from sluicegate.backends.base import Backend


def test_lock_taken_by_one_holder(backend: Backend) -> None:
    assert backend.acquire_lock("leader", "a", ttl=10)
    assert not backend.acquire_lock("leader", "b", ttl=10)
    assert backend.lock_holder("leader") is not None
    assert backend.lock_holder("leader")[0] == "a"  # type: ignore[index]


def test_lock_renewed_by_holder(backend: Backend, clock: FakeClock) -> None:
    assert backend.acquire_lock("leader", "a", ttl=10)
    clock.advance(8)
    assert backend.acquire_lock("leader", "a", ttl=10)
    clock.advance(8)
    assert not backend.acquire_lock("leader", "b", ttl=10)


def test_lock_expires_without_renewal(backend: Backend, clock: FakeClock) -> None:
    assert backend.acquire_lock("leader", "a", ttl=10)
    clock.advance(10.5)
    assert backend.lock_holder("leader") is None
    assert backend.acquire_lock("leader", "b", ttl=10)
    assert not backend.acquire_lock("leader", "a", ttl=10)


def test_lock_release_only_by_holder(backend: Backend) -> None:
    assert backend.acquire_lock("leader", "a", ttl=10)
    assert not backend.release_lock("leader", "b")
    assert backend.release_lock("leader", "a")
    assert backend.acquire_lock("leader", "b", ttl=10)


def test_compare_and_set_swaps_expected(backend: Backend) -> None:
    assert backend.get_value("k") is None
    assert backend.compare_and_set("k", None, b"1")
    assert not backend.compare_and_set("k", None, b"2")
    assert not backend.compare_and_set("k", b"0", b"2")
    assert backend.compare_and_set("k", b"1", b"2")
    assert backend.get_value("k") == b"2"


def test_compare_and_set_deletes(backend: Backend) -> None:
    assert backend.compare_and_set("k", None, b"1")
    assert backend.compare_and_set("k", b"1", None)
    assert backend.get_value("k") is None


def test_keys_by_prefix(backend: Backend) -> None:
    for key in ["schedule:b", "schedule:a", "breaker:x", "Schedule:c", "schedule_x"]:
        assert backend.compare_and_set(key, None, b"v")
    assert backend.keys("schedule:") == ["schedule:a", "schedule:b"]


def test_compare_and_set_across_connections(
    backend: Backend, connect: Callable[[], Backend]
) -> None:
    other = connect()
    assert backend.compare_and_set("k", None, b"1")
    assert not other.compare_and_set("k", None, b"x")
    assert other.compare_and_set("k", b"1", b"2")
    assert backend.get_value("k") == b"2"
