"""A queue's max_length stays unbroken under four producer processes and one slow worker."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from .support import AppModule, MakeApp, StartWorker, on_both_drivers

#: Sync thread-pool tasks, which both drivers run.
SYNC_SOURCE = """
bounded = app.queue("bounded", max_length=100)


@app.task(queue="bounded")
def slow(producer: int, index: int) -> int:
    time.sleep(0.01)
    return index
"""

PRODUCER = """
import importlib
import json
import sys
import time

from sluicegate import QueueFull

module_name, producer, target, deadline_s, out = sys.argv[1:]
task = importlib.import_module(module_name).slow
accepted, retry_afters, errors = [], [], []
deadline = time.monotonic() + float(deadline_s)
while len(accepted) < int(target) and time.monotonic() < deadline:
    try:
        accepted.append(task.enqueue(int(producer), len(accepted)).id)
    except QueueFull as exc:
        retry_afters.append(exc.retry_after)
        if exc.queue != "bounded" or exc.reason != "max_length" or exc.limit != 100:
            errors.append(repr(exc))
        time.sleep(0.005)
with open(out, "w") as file:
    json.dump({"accepted": accepted, "retry_afters": retry_afters, "errors": errors}, file)
"""

PRODUCERS = 4
PER_PRODUCER = 60
MAX_LENGTH = 100


@on_both_drivers
def test_bound_holds_under_producers(make_app: MakeApp, start_worker: StartWorker) -> None:
    module = make_app(SYNC_SOURCE)
    script = module.directory / "producer.py"
    script.write_text(PRODUCER)
    start_worker(module, "--concurrency", "1", "--queues", "bounded")

    outputs = [module.directory / f"producer-{n}.json" for n in range(PRODUCERS)]
    producers = []
    for n, out in enumerate(outputs):
        args = [module.name, str(n), str(PER_PRODUCER), "120", str(out)]
        with open(module.directory / f"producer-{n}.log", "wb") as log:
            producers.append(
                subprocess.Popen(
                    [sys.executable, str(script), *args],
                    cwd=module.directory,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        lengths, counted = sample_lengths(module, producers, timeout=150)
    finally:
        for producer in producers:
            if producer.poll() is None:
                producer.kill()
            producer.wait(10)

    for n, producer in enumerate(producers):
        log = (module.directory / f"producer-{n}.log").read_text()
        assert producer.returncode == 0, f"producer {n} failed:\n{log}"
    results = [json.loads(Path(out).read_text()) for out in outputs]
    accepted = [job_id for result in results for job_id in result["accepted"]]
    retry_afters = [value for result in results for value in result["retry_afters"]]

    assert max(lengths) <= MAX_LENGTH
    assert max(counted) <= MAX_LENGTH
    assert len(accepted) == PRODUCERS * PER_PRODUCER
    assert retry_afters, "no producer was ever rejected, so the bound was never reached"
    assert min(retry_afters) > 0
    assert [error for result in results for error in result["errors"]] == []
    print(
        f"max length sampled {max(lengths)} (by count {max(counted)}) over {len(lengths)} "
        f"samples; {len(retry_afters)} enqueue calls rejected with QueueFull"
    )

    records = module.wait_final(accepted, timeout=120)
    assert {record.state.value for record in records.values()} == {"succeeded"}
    assert module.live_messages("bounded") == 0


def sample_lengths(
    module: AppModule, producers: list[subprocess.Popen[bytes]], timeout: float
) -> tuple[list[int], list[int]]:
    """Sample the queue's length until every producer exits.

    Returns the lengths the backend reports and the live messages counted in
    the messages table, one of each per sample.
    """
    backend = module.app.backend
    lengths: list[int] = []
    counted: list[int] = []
    deadline = time.monotonic() + timeout
    while any(producer.poll() is None for producer in producers):
        assert time.monotonic() < deadline, f"producers still running after {timeout:g}s"
        lengths.append(backend.length("bounded"))
        counted.append(module.live_messages("bounded"))
        time.sleep(0.005)
    return lengths, counted
