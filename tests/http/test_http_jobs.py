"""Enqueue, read and cancel jobs over HTTP, against a real server and worker."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import pytest
from http_support import Deployment, wait_until

import sluicegate
from sluicegate import Client, JobNotFound


def post_job(base_url: str, queue: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/queues/{queue}/jobs", json=body, timeout=10)


def test_enqueue_runs_and_reports(deployment: Deployment) -> None:
    deployment.serve()
    deployment.worker("-q", "default")
    response = post_job(
        deployment.base_url, "default", {"task": f"{deployment.module}.add", "args": [1, 2]}
    )
    assert response.status_code == 202
    job = response.json()
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] in ("queued", "running", "succeeded")
    with Client(deployment.base_url) as client:
        final = client.wait(job["id"], timeout=30)
    assert final.result == 3
    assert final.progress == 0.5
    assert final.progress_message == "adding"
    assert final.document["state"] == "succeeded"


def test_idempotent_replay_returns_200(deployment: Deployment) -> None:
    deployment.serve()
    body = {"task": f"{deployment.module}.add", "args": [1, 2], "idempotency_key": "k-1"}
    first = post_job(deployment.base_url, "default", body)
    replay = post_job(deployment.base_url, "default", body)
    assert first.status_code == 202
    assert replay.status_code == 200
    assert replay.json()["id"] == first.json()["id"]
    assert replay.headers["Location"] == first.headers["Location"]


@pytest.mark.parametrize(
    ("queue", "body", "location"),
    [
        ("default", {"task": "nope.missing"}, ["body", "task"]),
        ("default", {"task": "{m}.add", "args": [1]}, ["body", "args"]),
        ("default", {"task": "{m}.add", "kwargs": {"a": 1, "c": 2}}, ["body", "kwargs"]),
        ("default", {"task": "{m}.add", "args": [{"$t": "nope", "v": 1}, 2]}, ["body", "args"]),
        ("other", {"task": "{m}.add", "args": [1, 2]}, ["path", "queue"]),
        ("default", {"task": "{m}.add", "args": [1, 2], "delay": -1}, ["body", "delay"]),
        ("default", {"task": "{m}.add", "args": [1, 2], "priority": 5000}, ["body", "priority"]),
        (
            "default",
            {"task": "{m}.add", "args": [1, 2], "eta": "2030-01-01T00:00:00"},
            ["body", "eta"],
        ),
        ("default", {"task": "{m}.add", "args": [1, 2], "surprise": 1}, ["body", "surprise"]),
    ],
)
def test_enqueue_rejects_with_422(
    deployment: Deployment, queue: str, body: dict[str, Any], location: list[str]
) -> None:
    deployment.serve()
    body = {**body, "task": body["task"].format(m=deployment.module)}
    response = post_job(deployment.base_url, queue, body)
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert [error["loc"][: len(location)] for error in errors] == [location]


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_delay_is_422(deployment: Deployment, raw: str) -> None:
    # JSON has no NaN or Infinity, but Python's parser accepts them. The 422
    # response must still be valid JSON, so it cannot echo the value.
    deployment.serve()
    content = f'{{"task": "{deployment.module}.add", "args": [1, 2], "delay": {raw}}}'
    response = httpx.post(
        f"{deployment.base_url}/v1/queues/default/jobs",
        content=content,
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][:2] == ["body", "delay"]


def test_body_over_limit_is_413(deployment: Deployment) -> None:
    deployment.serve("--max-body-size", "4096")
    url = f"{deployment.base_url}/v1/queues/default/jobs"
    body = {"task": f"{deployment.module}.add", "args": ["x" * 5000, 1]}
    sized = httpx.post(url, json=body, timeout=10)
    assert sized.status_code == 413
    assert "4096" in sized.json()["detail"]

    def chunks() -> Any:  # No Content-Length: the limit must hold while the body streams.
        yield b'{"task": "x", "args": ["'
        for _ in range(100):
            yield b"y" * 1000
        yield b'"]}'

    streamed = httpx.post(url, content=chunks(), timeout=10)
    assert streamed.status_code == 413


def test_unknown_job_is_404(deployment: Deployment) -> None:
    deployment.serve()
    base = deployment.base_url
    assert httpx.get(f"{base}/v1/jobs/no-such-job").status_code == 404
    assert httpx.delete(f"{base}/v1/jobs/no-such-job").status_code == 404
    assert httpx.get(f"{base}/v1/jobs/no-such-job/events").status_code == 404
    with Client(base) as client, pytest.raises(JobNotFound):
        client.job("no-such-job")


def test_cancel_scheduled_and_running(deployment: Deployment) -> None:
    deployment.serve()
    deployment.worker("-q", "default")
    base, module = deployment.base_url, deployment.module
    later = post_job(base, "default", {"task": f"{module}.add", "args": [1, 2], "delay": 600})
    assert later.json()["state"] == "scheduled"
    cancelled = httpx.delete(f"{base}/v1/jobs/{later.json()['id']}")
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled"

    running = post_job(base, "default", {"task": f"{module}.gated", "args": ["never"]}).json()
    with Client(base) as client:
        wait_until(lambda: client.job(running["id"]).state.value == "running", 30, "job to run")
        requested = client.cancel(running["id"])
        assert requested.cancel_requested
        assert client.wait(running["id"], timeout=30).state.value == "cancelled"


def test_queue_full_is_503(deployment: Deployment) -> None:
    deployment.serve()
    base, module = deployment.base_url, deployment.module
    app = sluicegate.App(f"sqlite:///{deployment.db_path}")
    app.queue("bounded", max_length=200)
    counted = app.task(name=f"{module}.counted", queue="bounded")(lambda key: None)
    counted.enqueue_many([((str(index),), {}) for index in range(199)])
    app.close()
    last = post_job(base, "bounded", {"task": f"{module}.counted", "args": ["last"]})
    assert last.status_code == 202
    full = post_job(base, "bounded", {"task": f"{module}.counted", "args": ["one more"]})
    assert full.status_code == 503
    assert int(full.headers["Retry-After"]) >= 1
    assert full.json()["queue"] == "bounded"
    assert full.json()["reason"] == "max_length"
    assert full.json()["limit"] == 200
    metrics = httpx.get(f"{base}/metrics").text
    assert 'sluicegate_jobs_rejected_total{queue="bounded",reason="max_length"' in metrics
    assert 'sluicegate_queue_depth{queue="bounded"} 200.0' in metrics


def test_queue_max_wait_is_503(deployment: Deployment) -> None:
    deployment.serve()
    base, module = deployment.base_url, deployment.module
    assert post_job(base, "stale", {"task": f"{module}.stale"}).status_code == 202
    wait_until(
        lambda: (httpx.get(f"{base}/v1/queues/stale").json()["oldest_ready_age"] or 0) > 0.3,
        10,
        "the oldest job in queue stale to wait past max_wait",
    )
    rejected = post_job(base, "stale", {"task": f"{module}.stale"})
    assert rejected.status_code == 503
    assert rejected.json()["reason"] == "max_wait"
    assert int(rejected.headers["Retry-After"]) >= 1


def test_queues_and_dead_letters(deployment: Deployment) -> None:
    deployment.serve()
    deployment.worker("-q", "default")
    base, module = deployment.base_url, deployment.module
    ids = [post_job(base, "default", {"task": f"{module}.broken"}).json()["id"] for _ in range(3)]
    with Client(base) as client:
        for job_id in ids:
            assert client.wait(job_id, timeout=30).state.value == "failed"
        names = [queue.name for queue in client.queues()]
        assert names == sorted(names)
        assert {"default", "bounded", "stale"} <= set(names)
        assert client.queue("default").dead == 3
    assert httpx.get(f"{base}/v1/queues/no-such-queue").status_code == 404
    letters = httpx.get(f"{base}/v1/queues/default/dead-letters").json()
    assert sorted(letter["message_id"] for letter in letters) == sorted(ids)
    assert "always broken" in letters[0]["reason"]
    one = httpx.post(f"{base}/v1/queues/default/dead-letters/{ids[0]}/retry")
    assert one.json() == {"count": 1}
    missing = httpx.post(f"{base}/v1/queues/default/dead-letters/no-such-id/retry")
    assert missing.status_code == 404
    wait_until(lambda: httpx.get(f"{base}/v1/queues/default").json()["dead"] == 3, 30, "re-dead")
    purged = httpx.delete(f"{base}/v1/queues/default/dead-letters")
    assert purged.json() == {"count": 3}


def test_probes_and_metrics(deployment: Deployment) -> None:
    deployment.serve()
    base = deployment.base_url
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{base}/readyz").json() == {"status": "ready"}
    post_job(base, "default", {"task": f"{deployment.module}.add", "args": [1, 2]})
    metrics = httpx.get(f"{base}/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert (
        f'sluicegate_jobs_enqueued_total{{queue="default",task="{deployment.module}.add"}} 1.0'
        in metrics.text
    )


def test_slow_client_does_not_block_others(deployment: Deployment) -> None:
    deployment.serve()
    base = deployment.base_url
    host, port = base.removeprefix("http://").split(":")
    slow = []
    for _ in range(20):  # Each keeps a connection with a half-sent request body.
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(
            b"POST /v1/queues/default/jobs HTTP/1.1\r\nHost: x\r\n"
            b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"task"'
        )
        slow.append(sock)
    try:
        for _ in range(10):
            response = post_job(
                base, "default", {"task": f"{deployment.module}.add", "args": [1, 2]}
            )
            assert response.status_code == 202
            assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
    finally:
        for sock in slow:
            sock.close()


def test_worker_exports_metrics(deployment: Deployment) -> None:
    deployment.serve()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    deployment.worker("-q", "default", "--metrics-port", str(port))
    with Client(deployment.base_url) as client:
        job = client.enqueue("default", f"{deployment.module}.add", [1, 2])
        client.wait(job.id, timeout=30)
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    labels = f'{{queue="default",task="{deployment.module}.add"}}'
    assert f"sluicegate_jobs_started_total{labels} 1.0" in text
    assert f"sluicegate_jobs_succeeded_total{labels} 1.0" in text
    assert f"sluicegate_job_run_seconds_count{labels} 1.0" in text
