"""Back pressure end to end: four producers against a queue bounded at 200."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import httpx
from http_support import Deployment, wait_until

PRODUCERS = 4
JOBS_PER_PRODUCER = 500
BOUND = 200

PRODUCER = """
import sys
from sluicegate import Backoff, Client

base_url, module, producer = sys.argv[1], sys.argv[2], sys.argv[3]
with Client(base_url, max_elapsed=120, backoff=Backoff(base=0.05, cap=2.0)) as client:
    for index in range({jobs}):
        job = client.enqueue("bounded", module + ".counted", [producer + "-" + str(index)])
        print(job.id, flush=True)
"""


def sample_length(db_path: str, stop: threading.Event, peaks: list[int]) -> None:
    """Record the largest live message count of queue ``bounded`` until ``stop`` is set."""
    conn = sqlite3.connect(db_path, timeout=30)
    deadline = time.monotonic() + 300
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            rows = conn.execute(
                "SELECT count(*) FROM messages WHERE queue = 'bounded' AND state != 3"
            ).fetchall()
            peaks.append(int(rows[0][0]))
            time.sleep(0.005)
    finally:
        conn.close()


def test_overload_every_job_once(deployment: Deployment) -> None:
    deployment.serve()
    script = textwrap.dedent(PRODUCER.format(jobs=JOBS_PER_PRODUCER))
    stop, peaks = threading.Event(), [0]
    sampler = threading.Thread(
        target=sample_length, args=(str(deployment.db_path), stop, peaks), daemon=True
    )
    sampler.start()
    producers = [
        subprocess.Popen(
            [sys.executable, "-c", script, deployment.base_url, deployment.module, f"p{n}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(PRODUCERS)
    ]
    try:
        # The worker starts once the queue is full, so producers must meet back pressure.
        wait_until(lambda: max(peaks) >= BOUND, 60, f"queue bounded to reach {BOUND}")
        deployment.worker("-q", "bounded", "--concurrency", "4")
        outputs = [producer.communicate(timeout=180)[0] for producer in producers]
    finally:
        for producer in producers:
            producer.kill()
    assert [producer.returncode for producer in producers] == [0] * PRODUCERS
    job_ids = [line for output in outputs for line in output.split()]
    assert len(set(job_ids)) == PRODUCERS * JOBS_PER_PRODUCER

    expected = PRODUCERS * JOBS_PER_PRODUCER
    wait_until(lambda: len(deployment.counted_keys()) >= expected, 120, "every job to run")
    stop.set()
    sampler.join(10)
    keys = deployment.counted_keys()
    assert len(keys) == expected
    assert len(set(keys)) == expected
    assert max(peaks) <= BOUND
    states = sqlite3.connect(deployment.db_path).execute(
        "SELECT state, count(*) FROM jobs WHERE task LIKE '%.counted' GROUP BY state"
    )
    assert dict(states.fetchall()) == {"succeeded": expected}
    metrics = httpx.get(f"{deployment.base_url}/metrics").text
    rejected = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith('sluicegate_jobs_rejected_total{queue="bounded"')
    ]
    assert sum(rejected) >= 1
