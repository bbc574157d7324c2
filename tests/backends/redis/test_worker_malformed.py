"""Workers on Redis keep serving past malformed messages and unexpected backend errors."""

from __future__ import annotations

import pytest

from sluicegate.backends.redis import RedisBackend
from worker.support import BOTH_LOOPS, wait_until

from .support import RedisApps

SOURCE = """
@app.task
def record_run(index: int) -> int:
    mark("run")
    return index


@app.task
def gated_run() -> str:
    mark("run")
    wait_for_file({gate!r})
    mark("finish")
    return "done"
"""

FAILURE_LOG = "exchange failed with an unexpected error"


@pytest.mark.slow
@pytest.mark.parametrize("loop", BOTH_LOOPS)
def test_worker_dead_letters_malformed_messages(
    redis_url: str, redis_apps: RedisApps, loop: str
) -> None:
    module = redis_apps.make(SOURCE.format(gate="unused"), redis_url, lease=30.0)
    task = module.task("record_run")
    corrupted = [task.enqueue(i).id for i in range(3)]
    valid = [task.enqueue(i).id for i in range(20)]
    backend = module.app.backend
    assert isinstance(backend, RedisBackend)
    client = backend._client
    client.hset(backend.layout.message(corrupted[0]), "fence", b"abc")
    client.hdel(backend.layout.message(corrupted[1]), "body")
    client.hset(backend.layout.message(corrupted[2]), "deliveries", b"x")

    worker = redis_apps.start(module, "--loop", loop)
    records = module.wait_final(valid + corrupted, timeout=60)

    assert {records[job_id].state.value for job_id in valid} == {"succeeded"}
    assert {records[job_id].state.value for job_id in corrupted} == {"failed"}
    assert {letter.message_id for letter in backend.dead_letters("default")} == set(corrupted)
    assert worker.alive
    assert "malformed message dead-lettered" in worker.log()
    assert backend.length("default") == 0


@pytest.mark.slow
@pytest.mark.parametrize("loop", BOTH_LOOPS)
def test_worker_survives_exchange_error(
    redis_url: str, redis_apps: RedisApps, loop: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    gate = tmp_path_factory.mktemp("gate") / "open"
    module = redis_apps.make(SOURCE.format(gate=str(gate)), redis_url, lease=60.0)
    backend = module.app.backend
    assert isinstance(backend, RedisBackend)
    client = backend._client
    leased = f"{backend.layout.tag}:q:default:leased"
    gated = module.task("gated_run").enqueue()
    worker = redis_apps.start(module, "--loop", loop)
    wait_until(lambda: module.events("run"), 30, "the gated job to start")

    # A lease set of the wrong type makes every exchange script fail at its first command.
    client.rename(leased, leased + ":saved")
    client.set(leased, b"not a sorted set")
    worker.wait_log(FAILURE_LOG, 30)
    gate.touch()
    wait_until(lambda: module.events("finish"), 30, "the gated job to finish")
    failures = worker.log().count(FAILURE_LOG)
    wait_until(
        lambda: worker.log().count(FAILURE_LOG) > failures,
        60,
        "an exchange with the job's settlement to fail",
    )
    client.delete(leased)
    client.rename(leased + ":saved", leased)
    later = module.task("record_run").enqueue(1)
    records = module.wait_final([gated.id, later.id], timeout=60)

    assert records[gated.id].state.value == "succeeded"
    assert records[later.id].state.value == "succeeded"
    assert len(module.events("run", gated.id)) == 1
    assert worker.alive
    assert "WRONGTYPE" in worker.log()
