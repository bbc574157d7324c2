"""Run a blocking call from a coroutine, importing asyncio only when a coroutine runs.

A worker that serves only sync tasks never imports asyncio, which keeps about
10 MiB (asyncio and the ssl module it loads) out of every such process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def to_thread(function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``asyncio.to_thread``: run ``function`` on the default executor and await it."""
    import asyncio

    return await asyncio.to_thread(function, *args, **kwargs)
