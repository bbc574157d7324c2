"""The enqueue route's own handler: FastAPI's responses for every body, and its access log.

``JsonBodyRoute`` parses the body of ``POST /v1/queues/{queue}/jobs`` itself.
Each body here goes both to the API and to a reference route that FastAPI
handles, with the same model and error handlers, and the two responses must
agree.
"""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import pytest
from asgi_support import call
from fastapi import FastAPI, Path, Response
from http_support import Deployment

from sluicegate import App
from sluicegate.http import api as api_module
from sluicegate.http.api import create_api
from sluicegate.http.routes import JsonBodyRoute
from sluicegate.http.schemas import EnqueueRequest

JOBS = "/v1/queues/default/jobs"
JSON = {"Content-Type": "application/json"}
VALID = b'{"task": "math.add", "args": [1, 2]}'

#: Bodies that fail, with their headers: each gets the reference route's status and body.
REJECTED = [
    pytest.param(b"", JSON, id="empty"),
    pytest.param(VALID, {}, id="no-content-type"),
    pytest.param(VALID, {"Content-Type": "text/plain"}, id="text-plain"),
    pytest.param(b'{"task": "math.add", "args": [1,', JSON, id="malformed"),
    pytest.param(b"[1, 2]", JSON, id="array"),
    pytest.param(b"null", JSON, id="null"),
    pytest.param(b'{"task": "math.add", "delay": NaN}', JSON, id="nan-delay"),
    pytest.param(b'{"task": "math.add", "delay": -1}', JSON, id="negative-delay"),
    pytest.param(b'{"task": "math.add", "priority": 1.5}', JSON, id="float-priority"),
    pytest.param(b'{"task": "math.add", "surprise": 1}', JSON, id="extra-field"),
    pytest.param(
        b'{"task": "math.add", "delay": 1, "eta": "2030-01-01T00:00:00Z"}', JSON, id="delay-and-eta"
    ),
    pytest.param(b'{"task": "\xff"}', JSON, id="invalid-utf-8"),
]

#: Bodies that orjson rejects and the json module accepts; FastAPI's route accepts them.
ACCEPTED = [
    pytest.param(b"\xef\xbb\xbf" + VALID, JSON, id="utf-8-bom"),
    pytest.param(VALID.decode().encode("utf-16"), JSON, id="utf-16"),
    pytest.param(b'{"task": "math.add", "args": [1, 100000000000000000000000]}', JSON, id="bigint"),
    pytest.param(VALID, {"Content-Type": "application/vnd.api+json; charset=utf-8"}, id="+json"),
]


@pytest.fixture
def api(app: App) -> FastAPI:
    @app.task(name="math.add")
    def add(a: int, b: int) -> int:
        return a + b

    return create_api(app)


@pytest.fixture
def reference() -> FastAPI:
    """A route with the enqueue route's body model, handled by FastAPI's own handler."""
    reference = FastAPI()
    api_module._add_error_handlers(reference)

    @reference.post("/v1/queues/{queue}/jobs", status_code=202)
    async def enqueue(queue: str, body: EnqueueRequest) -> dict[str, str]:
        return {"task": body.task}

    return reference


def post(api: FastAPI, content: bytes, headers: dict[str, str]) -> httpx.Response:
    return call(api, "POST", JOBS, content=content, headers=headers)


@pytest.mark.parametrize(("content", "headers"), REJECTED)
def test_rejected_body_matches_fastapi(
    api: FastAPI, reference: FastAPI, content: bytes, headers: dict[str, str]
) -> None:
    expected = post(reference, content, headers)
    response = post(api, content, headers)
    assert expected.status_code in (400, 422)
    assert response.status_code == expected.status_code
    assert response.json() == expected.json()


@pytest.mark.parametrize(("content", "headers"), ACCEPTED)
def test_accepted_body_matches_fastapi(
    api: FastAPI, reference: FastAPI, content: bytes, headers: dict[str, str]
) -> None:
    assert post(reference, content, headers).status_code == 202
    response = post(api, content, headers)
    assert response.status_code == 202
    assert response.json()["task"] == "math.add"


def test_created_job_reads_like_get(api: FastAPI) -> None:
    created = post(api, VALID, JSON)
    assert created.status_code == 202
    assert created.headers["content-type"] == "application/json"
    read = call(api, "GET", created.headers["Location"])
    assert read.status_code == 200
    assert created.content == read.content


async def takes_query(queue: str, limit: int, body: EnqueueRequest) -> Response:
    return Response()


def plain_function(queue: str, body: EnqueueRequest) -> Response:
    return Response()


async def without_body(queue: str) -> Response:
    return Response()


async def constrained_path(
    queue: Annotated[str, Path(max_length=3)], body: EnqueueRequest
) -> Response:
    return Response()


@pytest.mark.parametrize(
    ("endpoint", "problem"),
    [
        (takes_query, "query, header or cookie parameters"),
        (plain_function, "not a coroutine function"),
        (without_body, "exactly one body parameter"),
        (constrained_path, "plain str without constraints"),
    ],
)
def test_route_rejects_other_endpoints(endpoint: Any, problem: str) -> None:
    router = FastAPI().router
    with pytest.raises(TypeError, match=problem):
        router.add_api_route(
            "/v1/queues/{queue}/jobs",
            endpoint,
            methods=["POST"],
            route_class_override=JsonBodyRoute,
        )


def test_access_log_off_by_default(deployment: Deployment) -> None:
    server = deployment.serve()
    body = {"task": f"{deployment.module}.add", "args": [1, 2]}
    response = httpx.post(f"{deployment.base_url}{JOBS}", json=body, timeout=10)
    assert response.status_code == 202
    assert "uvicorn.access" not in server.log()


def test_access_log_option(deployment: Deployment) -> None:
    server = deployment.serve("--access-log")
    body = {"task": f"{deployment.module}.add", "args": [1, 2]}
    response = httpx.post(f"{deployment.base_url}{JOBS}", json=body, timeout=10)
    assert response.status_code == 202
    server.wait_log(r'uvicorn\.access .*"POST /v1/queues/default/jobs HTTP/1\.1" 202')
