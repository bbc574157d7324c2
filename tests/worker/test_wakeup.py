"""An idle worker picks up a new job through its wake-up socket, not by polling."""

from __future__ import annotations

from .support import MakeApp, StartWorker, on_both_drivers

#: Sync thread-pool tasks, which both drivers run.
SYNC_SOURCE = """
@app.task
def ping(n: int) -> int:
    mark("run")
    return n
"""

#: Jobs measured one after another; each must start soon after its enqueue.
ROUNDS = 5

#: Upper bound, in seconds, on enqueue-to-start latency of an idle worker. The
#: worker's fallback poll interval is 2 s, so a broken wake-up path misses this
#: bound in about three rounds out of four.
MAX_LATENCY = 0.5


@on_both_drivers
def test_idle_worker_wakes_on_enqueue(make_app: MakeApp, start_worker: StartWorker) -> None:
    module = make_app(SYNC_SOURCE)
    start_worker(module, "--concurrency", "2")
    latencies = []
    for n in range(ROUNDS):
        job = module.task("ping").enqueue(n)
        record = module.wait_final([job.id], timeout=30)[job.id]
        assert record.state.value == "succeeded"
        assert record.started_at is not None
        latencies.append(record.started_at - record.created_at)
    print(f"enqueue-to-start latencies (s): {[round(x, 4) for x in latencies]}")
    assert max(latencies) < MAX_LATENCY, latencies
