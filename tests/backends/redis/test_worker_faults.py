"""Worker faults on Redis: SIGKILLed workers and a restarted server lose no job."""

from __future__ import annotations

import random

import pytest

from worker.support import wait_until

from .conftest import RedisServer
from .support import RedisApps, leased_by

SOURCE = """
@app.task
def record_run(index: int) -> int:
    mark("run")
    time.sleep(0.001)
    return index


@app.task
def slow_run(index: int) -> int:
    mark("run")
    time.sleep(0.02)
    return index
"""

JOBS = 5000
WORKERS = 2
KILLS_PER_WORKER = 2
CONCURRENCY = 8
LEASE = 2.0


@pytest.mark.slow
def test_sigkill_two_workers_twice(
    redis_url: str, redis_apps: RedisApps, record_property: pytest.RecordProperty
) -> None:
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)
    module = redis_apps.make(SOURCE, redis_url, lease=LEASE)
    jobs = module.task("record_run").enqueue_many([((i,), {}) for i in range(JOBS)])
    ids = [job.id for job in jobs]
    workers = [redis_apps.start(module, "-c", str(CONCURRENCY)) for _ in range(WORKERS)]
    victims = list(range(WORKERS)) * KILLS_PER_WORKER
    rng.shuffle(victims)
    kill_points = sorted(rng.randint(JOBS // 20, JOBS * 3 // 4) for _ in victims)

    in_flight: set[str] = set()
    for victim, point in zip(victims, kill_points, strict=True):
        wait_until(lambda p=point: len(module.events("run")) >= p, 120, f"{point} runs")
        worker = workers[victim]
        worker.kill()
        in_flight |= leased_by(module, "default", worker)
        workers[victim] = redis_apps.start(module, "-c", str(CONCURRENCY))
    records = module.wait_final(ids, timeout=120)

    assert {record.state.value for record in records.values()} == {"succeeded"}
    assert module.app.backend.length("default") == 0
    runs = module.event_counts("run")
    assert set(runs) == set(ids), "some jobs never ran"
    ran_twice = {job_id for job_id, count in runs.items() if count > 1}
    assert ran_twice <= in_flight, "a job settled before a kill ran again"
    assert max(runs.values()) <= 1 + len(victims)
    summary = (
        f"{len(ran_twice)} of {JOBS} jobs ran more than once; {len(in_flight)} were leased "
        f"by a worker at its kill; kills at runs {kill_points} (seed {seed})"
    )
    print(summary)
    record_property("ran_twice", len(ran_twice))


@pytest.mark.slow
def test_worker_survives_server_restart(
    private_redis: RedisServer, redis_apps: RedisApps, capsys: pytest.CaptureFixture[str]
) -> None:
    module = redis_apps.make(SOURCE, f"{private_redis.url}?prefix=sgrestart", lease=5.0)
    jobs = module.task("slow_run").enqueue_many([((i,), {}) for i in range(1000)])
    ids = [job.id for job in jobs]
    worker = redis_apps.start(module, "-c", "4")
    wait_until(lambda: len(module.events("run")) >= 150, 60, "150 runs before the restart")

    private_redis.kill()
    worker.wait_log("redis connection lost", 30)
    private_redis.start()
    worker.wait_log("redis connection restored", 60)
    records = module.wait_final(ids, timeout=120)

    assert {record.state.value for record in records.values()} == {"succeeded"}
    runs = module.event_counts("run")
    assert set(runs) == set(ids)
    log = worker.log()
    assert f"address=redis://127.0.0.1:{private_redis.port}/0" in log
    assert private_redis.password not in log
    ran_twice = sum(1 for count in runs.values() if count > 1)
    with capsys.disabled():
        print(f"\nserver restart: {ran_twice} of {len(ids)} jobs ran more than once")


@pytest.mark.slow
def test_idle_worker_after_three_restarts(
    private_redis: RedisServer, redis_apps: RedisApps
) -> None:
    module = redis_apps.make(SOURCE, f"{private_redis.url}?prefix=sgrestarts", lease=2.0)
    worker = redis_apps.start(module)

    for _ in range(3):
        private_redis.kill()
        private_redis.start()
    jobs = module.task("record_run").enqueue_many([((i,), {}) for i in range(100)])
    records = module.wait_final([job.id for job in jobs], timeout=30)

    assert {record.state.value for record in records.values()} == {"succeeded"}
    assert worker.alive
    assert "redis subscription restored" in worker.log()
