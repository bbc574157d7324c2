"""The webhook allow-list check, which runs at enqueue before any delivery job exists."""

from __future__ import annotations

import pytest

from sluicegate.webhooks import WebhookPolicy

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
