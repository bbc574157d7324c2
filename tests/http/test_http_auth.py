"""Bearer tokens: 401 without a valid token, 403 for the read scope on writes."""

from __future__ import annotations

import subprocess

import httpx
import pytest
from asgi_support import call
from http_support import SLUICEGATE_COMMAND, Deployment

from sluicegate import App
from sluicegate.errors import ConfigurationError
from sluicegate.http.api import create_api
from sluicegate.http.auth import parse_tokens
from sluicegate.http.client import ApiError, Client

TOKENS = "r3ad-t0ken-value:read,wr1te-t0ken-value:write"


def test_tokens_enforce_scopes(deployment: Deployment) -> None:
    server = deployment.serve(env={"SLUICEGATE_API_TOKENS": TOKENS})
    base = f"{deployment.base_url}/v1/queues/default/jobs"
    body = {"task": f"{deployment.module}.add", "args": [1, 2]}
    read = {"Authorization": "Bearer r3ad-t0ken-value"}
    write = {"Authorization": "Bearer wr1te-t0ken-value"}
    assert httpx.post(base, json=body).status_code == 401
    assert httpx.post(base, json=body).headers["WWW-Authenticate"] == "Bearer"
    assert httpx.post(base, json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert httpx.post(base, json=body, headers=read).status_code == 403
    created = httpx.post(base, json=body, headers=write)
    assert created.status_code == 202
    job_url = f"{deployment.base_url}/v1/jobs/{created.json()['id']}"
    assert httpx.get(job_url).status_code == 401
    assert httpx.get(job_url, headers=read).status_code == 200
    assert httpx.get(job_url, headers=write).status_code == 200
    assert httpx.delete(job_url, headers=read).status_code == 403
    assert httpx.get(f"{deployment.base_url}/metrics").status_code == 401
    assert httpx.get(f"{deployment.base_url}/healthz").status_code == 200
    with Client(deployment.base_url, token="r3ad-t0ken-value") as client:
        with pytest.raises(ApiError) as raised:
            client.enqueue("default", f"{deployment.module}.add", [1, 2])
        assert raised.value.status_code == 403
    assert "t0ken-value" not in server.log()


def test_non_loopback_host_needs_tokens(deployment: Deployment) -> None:
    result = subprocess.run(
        [*SLUICEGATE_COMMAND, "serve", deployment.spec, "--host", "0.0.0.0", "--port", "0"],
        cwd=deployment.directory,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "SLUICEGATE_API_TOKENS": ""},
    )
    assert result.returncode == 2
    assert "SLUICEGATE_API_TOKENS" in result.stderr


@pytest.mark.parametrize("text", ["s3cr3t", "s3cr3t:admin", ":read", "s3cr3t:read,s3cr3t:write"])
def test_parse_tokens_rejects(text: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        parse_tokens(text)
    assert "s3cr3t" not in str(raised.value)


def test_parse_tokens_accepts() -> None:
    assert {k: v.value for k, v in parse_tokens(" a:read, b:c:write ").items()} == {
        "a": "read",
        "b:c": "write",
    }


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": "Bearer r3ad-t0ken-value"}, 403),
        ({"Authorization": "Bearer wr1te-t0ken-value"}, 422),
    ],
)
def test_token_checked_before_body(app: App, headers: dict[str, str], status: int) -> None:
    api = create_api(app, tokens=parse_tokens(TOKENS))
    response = call(
        api,
        "POST",
        "/v1/queues/default/jobs",
        content=b'{"task": "x", "args": [1,',
        headers={"Content-Type": "application/json", **headers},
    )
    assert response.status_code == status
