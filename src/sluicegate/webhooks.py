"""Webhooks: POST a job's final record to its ``callback_url``, signed, by a job.

A job enqueued with ``callback_url`` carries the URL in its message. When
its worker records a final state, it first enqueues a job of the built-in
task ``sluicegate.webhook`` on the same queue, then settles the job. The
delivery job is exempt from the queue's bound, and it is keyed by the job
id so that a job run again never adds a second delivery. The delivery job
is retried with backoff and dead-lettered like any job.

Configuration, read from the environment of workers and API servers:

- ``SLUICEGATE_WEBHOOK_HOSTS``: comma-separated allow-list of ``host`` or
  ``host:port`` entries. A URL whose host is not on it is never called.
- ``SLUICEGATE_WEBHOOK_SECRET``: the HMAC key. Deliveries fail without it.

Each request carries ``Content-Type: application/json``, the header
``Sluicegate-Job-Id`` and ``Sluicegate-Signature: t=UNIX_SECONDS,v1=HEX``,
where HEX is the hex HMAC-SHA256 with the secret over the bytes
``UNIX_SECONDS + "." + BODY``. Receivers check it with :func:`verify`.
Redirects are not followed, so an allowed host cannot redirect elsewhere.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from sluicegate.broker import QueueBounds
from sluicegate.documents import job_document
from sluicegate.errors import Fail, Retry, SluicegateError
from sluicegate.message import OutgoingMessage, encode_task_call, new_id
from sluicegate.retry import Backoff
from sluicegate.store import NewJob

if TYPE_CHECKING:
    from sluicegate.app import App
    from sluicegate.backends.base import Backend
    from sluicegate.task import Task

logger = logging.getLogger(__name__)

#: Name of the built-in task that delivers webhooks.
WEBHOOK_TASK = "sluicegate.webhook"

HOSTS_VARIABLE = "SLUICEGATE_WEBHOOK_HOSTS"
SECRET_VARIABLE = "SLUICEGATE_WEBHOOK_SECRET"
SIGNATURE_HEADER = "Sluicegate-Signature"

#: Seconds one delivery request may take.
REQUEST_TIMEOUT = 10.0

#: Retries of a failed delivery, and their backoff in seconds.
DELIVERY_RETRIES = 8
DELIVERY_BACKOFF = Backoff(base=1.0, factor=2.0, cap=300.0)

#: Seconds a signature stays valid for :func:`verify`.
SIGNATURE_TOLERANCE = 300.0

#: Bound under which delivery jobs are admitted: in effect none, because rejecting one
#: would lose the callback of a job that has already run. It is not declared, so the
#: queue's stats keep showing the bounds of its ordinary enqueues.
_DELIVERY_BOUNDS = QueueBounds(max_length=2**62, declared=False)


class WebhookError(SluicegateError):
    """A webhook delivery failed; the delivery job retries it."""


@dataclass(frozen=True)
class WebhookPolicy:
    """The allow-list of callback hosts, and the signing secret."""

    hosts: frozenset[str] = field(default_factory=frozenset)
    secret: str | None = None

    @classmethod
    def from_environment(cls) -> WebhookPolicy:
        """Read the allow-list and the secret from the environment."""
        entries = os.environ.get(HOSTS_VARIABLE, "").split(",")
        hosts = frozenset(entry.strip().lower() for entry in entries if entry.strip())
        return cls(hosts, os.environ.get(SECRET_VARIABLE) or None)

    def check(self, url: str) -> str | None:
        """Return why ``url`` may not be called, or None if it may."""
        if any(char.isspace() or ord(char) < 0x20 or ord(char) == 0x7F for char in url):
            return "callback_url must not contain spaces or control characters"
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError as exc:
            return f"callback_url is not a valid URL: {exc}"
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return f"callback_url must be an http or https URL, got {url!r}"
        host = parts.hostname.lower()
        allowed = host in self.hosts or (port is not None and f"{host}:{port}" in self.hosts)
        if not allowed:
            return f"callback host {host!r} is not in {HOSTS_VARIABLE}"
        return None


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Return the ``Sluicegate-Signature`` header value for ``body`` sent at ``timestamp``."""
    import hashlib  # Here: hashlib loads OpenSSL, which a worker without webhooks never needs.
    import hmac

    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes, now: float | None = None) -> bool:
    """Return whether ``header`` signs ``body`` with ``secret`` within the tolerance."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    timestamp = fields.get("t", "")
    if not timestamp.isdigit():
        return False
    now = time.time() if now is None else now
    if abs(now - int(timestamp)) > SIGNATURE_TOLERANCE:
        return False
    import hmac

    expected = sign(secret, int(timestamp), body)
    return hmac.compare_digest(expected, header.strip())


def enqueue_delivery(app: App, backend: Backend, job_id: str, queue: str, url: str) -> None:
    """Enqueue the job that delivers ``job_id``'s final record to ``url``.

    A second call for the same job returns the first delivery job, because
    the delivery's idempotency key is made from the job id.
    """
    delivery_id = new_id()
    body = encode_task_call(delivery_id, WEBHOOK_TASK, (job_id, url), {}, app.max_message_size)
    now = time.time()
    message = OutgoingMessage(delivery_id, queue, body, 0, now, now)
    new = NewJob(message, WEBHOOK_TASK, f"{WEBHOOK_TASK}:{job_id}")
    backend.enqueue_jobs([new], _DELIVERY_BOUNDS)
    logger.debug("webhook delivery enqueued job_id=%s delivery_id=%s", job_id, delivery_id)


def webhook_task(app: App) -> Task[Any, Any]:
    """Return the built-in delivery task of ``app``, registering it on first use."""
    from sluicegate.task import Task, TaskOptions

    existing = app.tasks.get(WEBHOOK_TASK)
    if existing is not None:
        return existing

    def deliver(job_id: str, url: str) -> int:
        return _deliver(app, job_id, url)

    options = TaskOptions(
        name=WEBHOOK_TASK,
        queue="default",  # Unused: each delivery job goes to the queue of its job.
        retries=DELIVERY_RETRIES,
        backoff=DELIVERY_BACKOFF,
        timeout=REQUEST_TIMEOUT * 2,
        pool="thread",
        priority=0,
        retry_on=(Exception,),
        lease=app.lease,
        retention=app.retention,
    )
    task: Task[Any, Any] = Task(app, deliver, options)
    app.tasks[WEBHOOK_TASK] = task
    return task


def _deliver(app: App, job_id: str, url: str) -> int:
    """POST the job's record to ``url``; return the HTTP status. Raises to retry or fail."""
    policy = WebhookPolicy.from_environment()
    reason = policy.check(url)
    if reason is not None:
        raise Fail(reason)
    if policy.secret is None:
        raise Fail(f"{SECRET_VARIABLE} is not set, so the webhook cannot be signed")

    record = app.backend.get_job(job_id)
    if record is None:
        raise Fail(f"job {job_id} not found; its record expired before the webhook was sent")
    if not record.state.is_final:
        # The job's worker enqueues this delivery just before it commits the outcome.
        raise Retry(f"job {job_id} is still {record.state.value}", delay=0.5)

    body = orjson.dumps(job_document(record))
    headers = {
        "Content-Type": "application/json",
        "Sluicegate-Job-Id": job_id,
        SIGNATURE_HEADER: sign(policy.secret, int(time.time()), body),
    }
    # urllib.request pulls in http.client and email; only webhook deliveries need them.
    import urllib.error
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None  # A redirect could lead off the allow-list.

    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=REQUEST_TIMEOUT) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        raise WebhookError(f"webhook to {url} failed with HTTP status {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise WebhookError(f"webhook to {url} failed: {exc}") from None
    logger.info("webhook delivered job_id=%s status=%d", job_id, status)
    return status
