"""Replays of an idempotency key over HTTP: the same call, and a key reused for another task."""

from __future__ import annotations

import pytest
from asgi_support import call
from fastapi import FastAPI

from sluicegate import App
from sluicegate.http.api import create_api

JOBS = "/v1/queues/default/jobs"


@pytest.fixture
def api(app: App) -> FastAPI:
    @app.task(name="math.add")
    def add(a: int, b: int) -> int:
        return a + b

    @app.task(name="math.mul")
    def mul(a: int, b: int) -> int:
        return a * b

    return create_api(app)


def enqueue(api: FastAPI, task: str, args: list[int], key: str = "order-17") -> tuple[int, dict]:
    response = call(api, "POST", JOBS, json={"task": task, "args": args, "idempotency_key": key})
    return response.status_code, response.json()


def test_same_call_replays(api: FastAPI) -> None:
    status, created = enqueue(api, "math.add", [1, 2])
    assert status == 202
    status, replayed = enqueue(api, "math.add", [1, 2])
    assert status == 200
    assert replayed["id"] == created["id"]


def test_other_task_conflicts(api: FastAPI, app: App) -> None:
    status, created = enqueue(api, "math.add", [1, 2])
    assert status == 202
    status, body = enqueue(api, "math.mul", [1, 2])
    assert status == 409
    assert "'order-17'" in body["detail"]
    assert created["id"] in body["detail"]
    assert "'math.add'" in body["detail"]
    assert [stats.ready for stats in app.backend.stats() if stats.name == "default"] == [1]


def test_other_args_same_task_replays(api: FastAPI) -> None:
    # A job record keeps no arguments, so this replay looks like a retry.
    status, created = enqueue(api, "math.add", [1, 2])
    assert status == 202
    status, replayed = enqueue(api, "math.add", [5, 6])
    assert status == 200
    assert replayed["id"] == created["id"]


def test_conflict_documented(api: FastAPI) -> None:
    document = call(api, "GET", "/openapi.json").json()
    assert "409" in document["paths"][JOBS.replace("default", "{queue}")]["post"]["responses"]
