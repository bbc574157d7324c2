"""Webhooks: the final record POSTed, signed, to an allowed loopback receiver."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import orjson
import pytest
from http_support import Deployment, wait_until

from sluicegate.webhooks import SIGNATURE_HEADER, verify

SECRET = "webhook-test-secret"


class Receiver(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    received: list[tuple[dict[str, str], bytes]] = []
    handler = type("Handler", (Receiver,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_webhook_delivers_signed_record(
    deployment: Deployment, receiver: tuple[str, list[tuple[dict[str, str], bytes]]]
) -> None:
    url, received = receiver
    port = url.split(":")[2].split("/")[0]
    env = {"SLUICEGATE_WEBHOOK_HOSTS": f"127.0.0.1:{port}", "SLUICEGATE_WEBHOOK_SECRET": SECRET}
    deployment.serve(env=env)
    deployment.start(["worker", deployment.spec, "-q", "default"], env).wait_log("worker started")
    body = {"task": f"{deployment.module}.add", "args": [2, 2], "callback_url": url}
    job = httpx.post(f"{deployment.base_url}/v1/queues/default/jobs", json=body).json()
    wait_until(lambda: received, 30, "the webhook to arrive")
    headers, payload = received[0]
    assert verify(SECRET, headers[SIGNATURE_HEADER], payload)
    assert not verify("another-secret", headers[SIGNATURE_HEADER], payload)
    record = orjson.loads(payload)
    assert record["id"] == job["id"]
    assert record["state"] == "succeeded"
    assert record["result"] == 4
    assert headers["Sluicegate-Job-Id"] == job["id"]


def test_webhook_host_not_allowed_is_422(deployment: Deployment) -> None:
    deployment.serve(env={"SLUICEGATE_WEBHOOK_HOSTS": "127.0.0.1:1"})
    body = {
        "task": f"{deployment.module}.add",
        "args": [2, 2],
        "callback_url": "http://127.0.0.2:8080/hook",
    }
    response = httpx.post(f"{deployment.base_url}/v1/queues/default/jobs", json=body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "callback_url"]
