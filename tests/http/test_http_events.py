"""Server-Sent Events of a job: every change until final, and resuming with Last-Event-ID."""

from __future__ import annotations

import asyncio

import httpx
from http_support import Deployment

from sluicegate import AsyncClient, Client


def test_events_until_final_and_resume(deployment: Deployment) -> None:
    deployment.serve()
    deployment.worker("-q", "default")
    client = Client(deployment.base_url)
    job = client.enqueue("default", f"{deployment.module}.stepped", [4, "s"])
    seen = []
    # Given a stream read until the second step's progress, then dropped.
    for event in client.events(job.id):
        seen.append(event)
        if event.job.progress == 0.25:
            break
        if event.job.state.value == "running" and event.job.progress is None:
            deployment.gate("s-0")
    assert seen[0].kind == "state"
    # When the job moves on while no client listens, and the client resumes.
    deployment.gate("s-1")
    resumed = []
    for event in client.events(job.id, last_event_id=seen[-1].id):
        resumed.append(event)
        if event.job.progress == 0.5:
            deployment.gate("s-2")
        if event.job.progress == 0.75:
            deployment.gate("s-3")
    # Then nothing repeats, ids grow, and the stream ends with the final record.
    ids = [event.id for event in seen + resumed]
    assert ids == sorted(set(ids))
    assert resumed[0].id > seen[-1].id
    assert resumed[-1].job.state.value == "succeeded"
    assert resumed[-1].job.result == "done"
    assert 0.75 in [event.job.progress for event in resumed]
    client.close()


def test_events_caught_up_is_204(deployment: Deployment) -> None:
    deployment.serve()
    deployment.worker("-q", "default")
    with Client(deployment.base_url) as client:
        job = client.enqueue("default", f"{deployment.module}.add", [1, 2])
        events = list(client.events(job.id))
    assert events[-1].job.state.value == "succeeded"
    url = f"{deployment.base_url}/v1/jobs/{job.id}/events"
    replay = httpx.get(url, headers={"Last-Event-ID": str(events[-1].id)})
    assert replay.status_code == 204
    raw = httpx.get(url, headers={"Last-Event-ID": str(events[-1].id - 1)})
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert f"id: {events[-1].id}\nevent: " in raw.text


def test_async_client_events(deployment: Deployment) -> None:
    deployment.serve()
    deployment.worker("-q", "default")

    async def run() -> list[str]:
        async with AsyncClient(deployment.base_url) as client:
            job = await client.enqueue("default", f"{deployment.module}.add", [2, 3])
            states = [event.job.state.value async for event in client.events(job.id)]
            final = await client.wait(job.id, timeout=30)
            assert final.result == 5
            return states

    states = asyncio.run(run())
    assert states[-1] == "succeeded"
