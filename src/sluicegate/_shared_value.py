"""Read-modify-write of one store value with compare-and-set, retried on conflict.

The rate limiter and the retry budget keep their state under one store key
each, which every process on every host updates. This is their update loop.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from sluicegate.errors import StoreUnavailable
from sluicegate.store import Store

T = TypeVar("T")

#: Attempts of one read-modify-write before giving up with ``StoreUnavailable``.
MAX_UPDATE_ATTEMPTS = 50

#: Upper bound, in seconds, of the random pause after a lost compare-and-set.
MAX_CONFLICT_PAUSE = 0.005


def update_value(
    store: Store,
    key: str,
    step: Callable[[bytes | None], tuple[bytes | None, T]],
    owner: str,
) -> T:
    """Apply ``step`` to the value under ``key`` atomically and return its result.

    ``step`` receives the stored bytes (None when the key is absent) and
    returns the new bytes and a result. It may run several times, once per
    attempt, so it must not have side effects. When it returns the bytes it
    was given, nothing is written. A lost swap is retried after a random pause
    of up to ``MAX_CONFLICT_PAUSE`` seconds. After ``MAX_UPDATE_ATTEMPTS`` lost
    swaps in a row it raises ``StoreUnavailable``, naming ``owner``.
    """
    for _ in range(MAX_UPDATE_ATTEMPTS):
        raw = store.get_value(key)
        new_raw, result = step(raw)
        if new_raw == raw or store.compare_and_set(key, raw, new_raw):
            return result
        # Another process changed the value between the read and the swap.
        time.sleep(random.uniform(0, MAX_CONFLICT_PAUSE))
    raise StoreUnavailable(
        f"{owner}: the value under {key!r} kept changing under {MAX_UPDATE_ATTEMPTS} "
        f"consecutive update attempts; retry the call"
    )


def resolve_store(store: Store | Callable[[], Store]) -> Store:
    """Return ``store``, or call it when it is a function that returns the store."""
    return store() if callable(store) else store
