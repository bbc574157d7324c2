"""Job and message ids: UUIDv7 strings, growing within a process, unique across a fork."""

from __future__ import annotations

import os
import uuid

from sluicegate.message import new_id

COUNT = 20_000


def test_ids_are_uuid7() -> None:
    for text in (new_id() for _ in range(1_000)):
        parsed = uuid.UUID(text)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text


def test_ids_grow_within_process() -> None:
    ids = [new_id() for _ in range(COUNT)]

    assert ids == sorted(ids)
    assert len(set(ids)) == COUNT


def test_forked_child_makes_other_ids() -> None:
    new_id()  # The parent now has unused random ends.
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # The child: send its ids, then leave without running atexit hooks.
        try:
            os.write(write_end, ",".join(new_id() for _ in range(100)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child_ids = pipe.read().split(",")
    os.waitpid(pid, 0)
    parent_ids = [new_id() for _ in range(100)]

    # Ids made in the same millisecond share their first half; the random ends must differ.
    child_ends = {text[19:] for text in child_ids}
    parent_ends = {text[19:] for text in parent_ids}
    assert len(child_ids) == 100
    assert not child_ends & parent_ends
