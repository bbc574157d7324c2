"""Helpers that drive a breaker through guarded calls."""

from __future__ import annotations

from sluicegate.breaker import Breaker


class Down(Exception):
    """The failure the guarded dependency raises in these tests."""


def succeed(breaker: Breaker, times: int = 1) -> None:
    """Run ``times`` successful calls through ``breaker``."""
    for _ in range(times):
        with breaker:
            pass


def fail(breaker: Breaker, times: int = 1, error: type[Exception] = Down) -> None:
    """Run ``times`` calls through ``breaker`` that raise ``error``."""
    for _ in range(times):
        try:
            with breaker:
                raise error("down")
        except error:
            pass
