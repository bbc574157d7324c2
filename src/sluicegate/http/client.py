"""The Python client of the HTTP API, sync (:class:`Client`) and async (:class:`AsyncClient`).

Both retry what a retry can fix: connection errors, timeouts, 429 and 503.
They wait with exponential backoff and full jitter, at least as long as the
server's ``Retry-After``, and give up after ``max_elapsed`` seconds with
``QueueFull`` (the queue stayed full) or ``Unavailable`` (anything else).
Every logical enqueue carries one idempotency key, generated once unless
the caller passes one, so a retry after a lost response never creates a
second job.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from sluicegate import codec
from sluicegate.broker import QueueStats
from sluicegate.errors import (
    JobNotFound,
    JobTimeout,
    QueueFull,
    SluicegateError,
    Unavailable,
)
from sluicegate.retry import Backoff
from sluicegate.store import ErrorInfo, JobState

#: Statuses worth retrying: the server is overloaded or briefly unavailable.
RETRY_STATUSES = frozenset({429, 503})

#: Default backoff between retries, in seconds.
DEFAULT_BACKOFF = Backoff(base=0.1, factor=2.0, cap=10.0)


class ApiError(SluicegateError):
    """The API rejected a request (401, 403, 413, 422, ...); ``detail`` is its explanation."""

    def __init__(self, status_code: int, detail: Any) -> None:
        self.status_code = status_code
        self.detail = detail
        super().__init__(f"HTTP {status_code}: {detail}")


@dataclass(frozen=True)
class RemoteJob:
    """A job's record as the API returned it; ``result`` is decoded to Python values."""

    id: str
    task: str
    queue: str
    state: JobState
    attempts: int
    result: Any
    error: ErrorInfo | None
    progress: float | None
    progress_message: str | None
    cancel_requested: bool
    version: int
    document: Mapping[str, Any]

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> RemoteJob:
        error = document.get("error")
        result = document.get("result")
        return cls(
            id=document["id"],
            task=document["task"],
            queue=document["queue"],
            state=JobState(document["state"]),
            attempts=document["attempts"],
            result=None if result is None else codec.from_json(result),
            error=None if error is None else ErrorInfo(**error),
            progress=document.get("progress"),
            progress_message=document.get("progress_message"),
            cancel_requested=bool(document.get("cancel_requested")),
            version=int(document.get("version", 0)),
            document=document,
        )


@dataclass(frozen=True)
class JobEvent:
    """One Server-Sent Event of a job: its id, kind (``state`` or ``progress``) and record."""

    id: int
    kind: str
    job: RemoteJob


class _Policy:
    """The retry rules and request building that both clients share."""

    def __init__(
        self, base_url: str, token: str | None, max_elapsed: float, backoff: Backoff
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.max_elapsed = max_elapsed
        self.backoff = backoff

    def pause(self, attempt: int, started: float, outcome: httpx.Response | Exception) -> float:
        """Return seconds to wait before the next attempt, or raise if the deadline is near."""
        delay = self.backoff.delay(attempt)
        if isinstance(outcome, httpx.Response):
            delay = max(delay, _retry_after(outcome))
        if time.monotonic() - started + delay > self.max_elapsed:
            raise _give_up(outcome, self.max_elapsed)
        return delay

    @staticmethod
    def enqueue_body(
        task: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any] | None,
        delay: float | None,
        eta: dt.datetime | None,
        priority: int | None,
        idempotency_key: str | None,
        callback_url: str | None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "task": task,
            "args": codec.to_json(list(args), "args"),
            "kwargs": codec.to_json(dict(kwargs or {}), "kwargs"),
            "idempotency_key": idempotency_key or f"client-{uuid.uuid4()}",
        }
        options = {"delay": delay, "priority": priority, "callback_url": callback_url}
        body.update({key: value for key, value in options.items() if value is not None})
        if eta is not None:
            body["eta"] = eta.isoformat()
        return body


def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("Retry-After", "")
    try:
        return max(float(value), 0.0)
    except ValueError:
        return 0.0


def _give_up(outcome: httpx.Response | Exception, max_elapsed: float) -> SluicegateError:
    if isinstance(outcome, httpx.Response):
        body = _json(outcome)
        if outcome.status_code == 503 and isinstance(body, dict) and "queue" in body:
            return QueueFull(body["queue"], body["reason"], body["limit"], body["retry_after"])
        return Unavailable(
            f"API answered {outcome.status_code} for {max_elapsed:g}s of retries: {body}"
        )
    return Unavailable(f"API unreachable for {max_elapsed:g}s of retries: {outcome!r}")


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _check(response: httpx.Response, job_id: str | None = None) -> Any:
    """Return the response's JSON; raise ``JobNotFound`` or ``ApiError`` for an error."""
    if response.status_code == 404 and job_id is not None:
        raise JobNotFound(job_id)
    if response.status_code >= 400:
        body = _json(response)
        raise ApiError(response.status_code, body.get("detail") if isinstance(body, dict) else body)
    return response.json()


def _queue_stats(document: Mapping[str, Any]) -> QueueStats:
    return QueueStats(
        name=document["name"],
        ready=document["ready"],
        delayed=document["delayed"],
        running=document["running"],
        dead=document["dead"],
        oldest_ready_age=document["oldest_ready_age"],
        max_length=document["max_length"],
        max_wait=document["max_wait"],
        enqueue_rate=document["enqueue_rate"],
        completion_rate=document["completion_rate"],
    )


class _EventParser:
    """Turns lines of a ``text/event-stream`` into :class:`JobEvent` objects."""

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}

    def feed(self, line: str) -> JobEvent | None:
        if line:
            name, _, value = line.partition(":")
            if name:  # A line starting with ":" is a comment.
                self.fields[name] = value.removeprefix(" ")
            return None
        fields, self.fields = self.fields, {}
        if "data" not in fields or "id" not in fields:
            return None
        document = orjson.loads(fields["data"])
        return JobEvent(
            int(fields["id"]), fields.get("event", "state"), RemoteJob.from_document(document)
        )


class Client:
    """A blocking client of a ``sluicegate serve`` API.

    Parameters:
      base_url: e.g. ``http://127.0.0.1:8000``.
      token: a bearer token from the server's ``SLUICEGATE_API_TOKENS``.
      timeout: seconds one HTTP request may take.
      max_elapsed: seconds of retries after which a call gives up.
      backoff: the wait between retries; the server's ``Retry-After`` is a floor.
      transport: an httpx transport to send requests through, e.g. in tests.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        max_elapsed: float = 60.0,
        backoff: Backoff = DEFAULT_BACKOFF,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._policy = _Policy(base_url, token, max_elapsed, backoff)
        self._http = httpx.Client(
            base_url=self._policy.base_url,
            headers=self._policy.headers,
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request, retrying connection errors, timeouts, 429 and 503."""
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            outcome: httpx.Response | Exception
            try:
                outcome = self._http.request(method, path, **kwargs)
                if outcome.status_code not in RETRY_STATUSES:
                    return outcome
            except httpx.TransportError as exc:
                outcome = exc
            time.sleep(self._policy.pause(attempt, started, outcome))

    def enqueue(
        self,
        queue: str,
        task: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        delay: float | None = None,
        eta: dt.datetime | None = None,
        priority: int | None = None,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
    ) -> RemoteJob:
        """Enqueue a call of ``task`` on ``queue`` and return the job.

        Raises ``QueueFull`` if the queue stayed full for ``max_elapsed``
        seconds, ``ApiError`` for a rejected request (422 for an unknown task
        or arguments that do not fit) and ``Unavailable`` otherwise.
        """
        body = self._policy.enqueue_body(
            task, args, kwargs, delay, eta, priority, idempotency_key, callback_url
        )
        response = self.request("POST", f"/v1/queues/{queue}/jobs", json=body)
        return RemoteJob.from_document(_check(response))

    def job(self, job_id: str) -> RemoteJob:
        """Return the job's record; raise ``JobNotFound`` for an unknown or expired id."""
        return RemoteJob.from_document(_check(self.request("GET", f"/v1/jobs/{job_id}"), job_id))

    def cancel(self, job_id: str) -> RemoteJob:
        """Cancel the job (see ``DELETE /v1/jobs/{id}``) and return its record after."""
        response = self.request("DELETE", f"/v1/jobs/{job_id}")
        return RemoteJob.from_document(_check(response, job_id))

    def queues(self) -> list[QueueStats]:
        """Return every queue's stats, with the bounds the server enforces."""
        return [_queue_stats(q) for q in _check(self.request("GET", "/v1/queues"))]

    def queue(self, name: str) -> QueueStats:
        """Return one queue's stats; raise ``ApiError`` (404) for an unknown queue."""
        return _queue_stats(_check(self.request("GET", f"/v1/queues/{name}")))

    def events(self, job_id: str, last_event_id: int | None = None) -> Iterator[JobEvent]:
        """Yield the job's events until it is final, reconnecting with ``Last-Event-ID``.

        ``max_elapsed`` bounds each outage, counted from the first failed
        attempt after the stream last connected, not the whole stream.
        """
        outage_started: float | None = None
        attempt = 0
        while True:
            headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
            try:
                with self._http.stream(
                    "GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=None
                ) as response:
                    if response.status_code == 204:
                        return
                    if response.status_code not in RETRY_STATUSES:
                        if response.status_code >= 400:
                            response.read()
                            _check(response, job_id)
                        outage_started, attempt = None, 0
                        parser = _EventParser()
                        for line in response.iter_lines():
                            event = parser.feed(line)
                            if event is not None:
                                last_event_id = event.id
                                attempt = 0
                                yield event
                                if event.job.state.is_final:
                                    return
                        outcome: httpx.Response | Exception = response
                    else:
                        outcome = response
            except httpx.TransportError as exc:
                outcome = exc
            attempt += 1
            if outage_started is None:
                outage_started = time.monotonic()
            time.sleep(self._policy.pause(attempt, outage_started, outcome))

    def wait(self, job_id: str, timeout: float | None = None) -> RemoteJob:
        """Block until the job is final and return it; raise ``JobTimeout`` after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job = self.job(job_id)
        interval = 0.05
        while not job.state.is_final:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise JobTimeout(job_id, timeout or 0.0, job.state.value)
            time.sleep(interval if remaining is None else min(interval, remaining))
            interval = min(interval * 2, 1.0)
            job = self.job(job_id)
        return job


class AsyncClient:
    """The async twin of :class:`Client`, on ``httpx.AsyncClient``; same parameters."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        max_elapsed: float = 60.0,
        backoff: Backoff = DEFAULT_BACKOFF,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._policy = _Policy(base_url, token, max_elapsed, backoff)
        self._http = httpx.AsyncClient(
            base_url=self._policy.base_url,
            headers=self._policy.headers,
            timeout=timeout,
            transport=transport,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request, retrying connection errors, timeouts, 429 and 503."""
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            outcome: httpx.Response | Exception
            try:
                outcome = await self._http.request(method, path, **kwargs)
                if outcome.status_code not in RETRY_STATUSES:
                    return outcome
            except httpx.TransportError as exc:
                outcome = exc
            await asyncio.sleep(self._policy.pause(attempt, started, outcome))

    async def enqueue(
        self,
        queue: str,
        task: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        delay: float | None = None,
        eta: dt.datetime | None = None,
        priority: int | None = None,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
    ) -> RemoteJob:
        """Enqueue a call of ``task`` on ``queue``; see :meth:`Client.enqueue`."""
        body = self._policy.enqueue_body(
            task, args, kwargs, delay, eta, priority, idempotency_key, callback_url
        )
        response = await self.request("POST", f"/v1/queues/{queue}/jobs", json=body)
        return RemoteJob.from_document(_check(response))

    async def job(self, job_id: str) -> RemoteJob:
        """Return the job's record; raise ``JobNotFound`` for an unknown or expired id."""
        response = await self.request("GET", f"/v1/jobs/{job_id}")
        return RemoteJob.from_document(_check(response, job_id))

    async def cancel(self, job_id: str) -> RemoteJob:
        """Cancel the job and return its record after the request."""
        response = await self.request("DELETE", f"/v1/jobs/{job_id}")
        return RemoteJob.from_document(_check(response, job_id))

    async def queues(self) -> list[QueueStats]:
        """Return every queue's stats, with the bounds the server enforces."""
        return [_queue_stats(q) for q in _check(await self.request("GET", "/v1/queues"))]

    async def queue(self, name: str) -> QueueStats:
        """Return one queue's stats; raise ``ApiError`` (404) for an unknown queue."""
        return _queue_stats(_check(await self.request("GET", f"/v1/queues/{name}")))

    async def events(
        self, job_id: str, last_event_id: int | None = None
    ) -> AsyncIterator[JobEvent]:
        """Yield the job's events until it is final, reconnecting with ``Last-Event-ID``.

        ``max_elapsed`` bounds each outage, counted from the first failed
        attempt after the stream last connected, not the whole stream.
        """
        outage_started: float | None = None
        attempt = 0
        while True:
            headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
            try:
                async with self._http.stream(
                    "GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=None
                ) as response:
                    if response.status_code == 204:
                        return
                    outcome: httpx.Response | Exception = response
                    if response.status_code not in RETRY_STATUSES:
                        if response.status_code >= 400:
                            await response.aread()
                            _check(response, job_id)
                        outage_started, attempt = None, 0
                        parser = _EventParser()
                        async for line in response.aiter_lines():
                            event = parser.feed(line)
                            if event is not None:
                                last_event_id = event.id
                                attempt = 0
                                yield event
                                if event.job.state.is_final:
                                    return
            except httpx.TransportError as exc:
                outcome = exc
            attempt += 1
            if outage_started is None:
                outage_started = time.monotonic()
            await asyncio.sleep(self._policy.pause(attempt, outage_started, outcome))

    async def wait(self, job_id: str, timeout: float | None = None) -> RemoteJob:
        """Wait until the job is final and return it; raise ``JobTimeout`` after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job = await self.job(job_id)
        interval = 0.05
        while not job.state.is_final:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise JobTimeout(job_id, timeout or 0.0, job.state.value)
            await asyncio.sleep(interval if remaining is None else min(interval, remaining))
            interval = min(interval * 2, 1.0)
            job = await self.job(job_id)
        return job
