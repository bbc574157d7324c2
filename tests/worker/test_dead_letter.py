"""Messages a worker cannot run are dead-lettered with a reason, and the worker goes on."""

from __future__ import annotations

import time

from sluicegate.message import OutgoingMessage, encode_task_call, new_id
from sluicegate.store import NewJob

from .support import MakeApp, StartWorker, on_both_drivers, wait_until

#: Sync thread-pool tasks, which both drivers run.
SYNC_SOURCE = """
@app.task
def echo(value: str) -> str:
    mark("run")
    return value
"""

#: Raw message bodies that are not task messages, and a word their dead-letter reason names.
GARBAGE = [
    (b"\xff\xfe\x00 not json", "invalid JSON"),
    (b"[1, 2, 3]", "not an object"),
    (b'{"v": 99, "id": "x", "task": "y"}', "unsupported envelope version"),
    (b'{"v": 1, "args": []}', "lacks a string 'id' and 'task'"),
]


@on_both_drivers
def test_garbage_is_dead_lettered(make_app: MakeApp, start_worker: StartWorker) -> None:
    module = make_app(SYNC_SOURCE)
    app = module.app
    worker = start_worker(module)
    now = time.time()
    garbage_ids = []
    for body, _ in GARBAGE:
        message_id = new_id()
        message = OutgoingMessage(message_id, "default", body, 0, now, now)
        app.backend.publish([message], app.bounds("default"))
        garbage_ids.append(message_id)

    unknown_id = new_id()
    body = encode_task_call(unknown_id, "no.such.task", (), {}, app.max_message_size)
    message = OutgoingMessage(unknown_id, "default", body, 0, now, now)
    app.backend.enqueue_jobs([NewJob(message, "no.such.task")], app.bounds("default"))

    queue = app.queue("default")
    dead = wait_until(
        lambda: (found := queue.dead_letters()) and len(found) == len(GARBAGE) + 1 and found,
        30,
        "every bad message to be dead-lettered",
    )
    reasons = {letter.message_id: letter.reason for letter in dead}
    for message_id, (_, expected) in zip(garbage_ids, GARBAGE, strict=True):
        assert reasons[message_id].startswith("undeliverable")
        assert expected in reasons[message_id]
    assert "no task named 'no.such.task'" in reasons[unknown_id]

    record = module.record(unknown_id)
    assert record.state.value == "failed"
    assert record.error is not None
    assert record.error.type == "UnknownTask"
    assert record.note is not None
    assert "no.such.task" in record.note

    job = module.task("echo").enqueue("after the garbage")
    after = module.wait_final([job.id], timeout=30)[job.id]
    assert after.state.value == "succeeded"
    assert worker.alive
    assert module.live_messages("default") == 0
