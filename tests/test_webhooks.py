"""The webhook allow-list check, and the delivery job's admission to its queue."""

from __future__ import annotations

import pytest

import sluicegate
from sluicegate.webhooks import WebhookPolicy, enqueue_delivery

POLICY = WebhookPolicy(frozenset({"hooks.example", "127.0.0.1:8080"}))


@pytest.mark.parametrize(
    "url",
    ["https://hooks.example/done", "http://127.0.0.1:8080/cb", "https://HOOKS.example:443/x"],
)
def test_allowed_url_passes(url: str) -> None:
    assert POLICY.check(url) is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://evil.example/x", "not in"),
        ("https://hooks.example@evil.example/x", "not in"),
        ("http://127.0.0.1:9090/cb", "not in"),
        ("ftp://hooks.example/x", "http or https"),
        ("https://hooks.example/a b", "spaces or control"),
        ("https://hooks.example/a\r\nX-Evil: 1", "spaces or control"),
        ("https://hooks.example/\x7f", "spaces or control"),
        ("http://[::1/x", "not a valid URL"),
    ],
)
def test_rejected_url_names_reason(url: str, reason: str) -> None:
    message = POLICY.check(url)
    assert message is not None
    assert reason in message


def test_delivery_keeps_queue_bounds(app: sluicegate.App) -> None:
    app.queue("mail", max_length=1, max_wait=60)

    @app.task(queue="mail")
    def send(user_id: int) -> None: ...

    job = send.enqueue(1)
    # The queue is full, and the delivery job is admitted anyway. The second call
    # for the same job adds no second delivery job.
    enqueue_delivery(app, app.backend, job.id, "mail", "https://hooks.example/done")
    enqueue_delivery(app, app.backend, job.id, "mail", "https://hooks.example/done")
    (stats,) = app.backend.stats("mail")

    assert stats.ready == 2
    assert stats.max_length == 1
    assert stats.max_wait == 60
