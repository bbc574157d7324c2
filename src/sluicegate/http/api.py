"""The HTTP API: enqueue and follow jobs, inspect queues and dead letters.

Every route is under ``/v1`` except ``/healthz``, ``/readyz`` and
``/metrics``. Handlers that touch the store are plain functions, which
FastAPI runs on its thread pool, because every backend call blocks. The
busiest route, ``POST /v1/queues/{queue}/jobs``, is the exception: a
:class:`~sluicegate.http.routes.JsonBodyRoute` parses its body on the event
loop and runs its blocking part on a dedicated executor, in one hop.

Status codes: 202 for a created job (with a ``Location`` header), and 200
for a replayed idempotency key and for reads. 401 and 403 are for
authentication (see :mod:`sluicegate.http.auth`), checked before the body
is read, and 404 for an unknown job, queue or breaker. 408 reports a body
that did not arrive within the read timeout, and 413 a body over the size
limit. 409 rejects a replayed idempotency key whose job runs another task.
422 rejects a request that names an unknown task, does not fit the task's
signature or cannot be encoded. 503 with ``Retry-After`` reports a full
queue or an unavailable store.

A job must be enqueued on its task's own queue: a ``POST`` to another
queue gets 422, because a task's queue is part of its definition and
routing the job elsewhere would hide the caller's mistake.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST

from sluicegate import __version__, codec
from sluicegate.app import App
from sluicegate.backpressure import MAX_RETRY_AFTER
from sluicegate.breaker import BreakerSnapshot, breaker_of, is_known_breaker, known_breakers
from sluicegate.broker import QueueStats
from sluicegate.errors import (
    ConfigurationError,
    DecodeError,
    EncodeError,
    InvalidArguments,
    PayloadTooLarge,
    QueueFull,
    StoreUnavailable,
)
from sluicegate.http import schemas, sse
from sluicegate.http.auth import AuthenticatedRoute, Scope, requirement
from sluicegate.http.limits import BodyLimits
from sluicegate.http.metrics import ApiMetrics
from sluicegate.http.routes import JsonBodyRoute
from sluicegate.http.schemas import (
    BreakerBody,
    CountBody,
    DeadLetterBody,
    DetailBody,
    EnqueueRequest,
    ForceOpenRequest,
    HealthBody,
    JobBody,
    QueueBody,
    QueueFullBody,
)
from sluicegate.store import JobRecord, NewJob
from sluicegate.webhooks import WebhookPolicy

logger = logging.getLogger(__name__)

#: Extra bytes a request body may have beyond the app's ``max_message_size``, for the
#: JSON fields around the arguments.
BODY_SIZE_MARGIN = 64 * 1024

#: ``Retry-After``, in seconds, when the store does not respond.
STORE_RETRY_AFTER = 1

#: Seconds a client has to send a request body after its headers arrive.
DEFAULT_BODY_TIMEOUT = 30.0

#: Threads that run ``POST /v1/queues/{queue}/jobs``. The SQLite backend commits the
#: enqueues of all threads waiting at once in one transaction and one fsync (group
#: commit), so up to this many requests share a commit. Further requests wait in the
#: executor's queue for a thread.
ENQUEUE_THREADS = 16

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": DetailBody, "description": "Missing or invalid bearer token."},
    403: {"model": DetailBody, "description": "The token lacks the scope."},
    503: {"model": DetailBody, "description": "The store is unavailable; see Retry-After."},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": DetailBody}}

JobId = Annotated[str, Path(description="The job id returned at enqueue.")]
QueueName = Annotated[str, Path(description="Queue name.")]
BreakerName = Annotated[str, Path(description="Breaker name.", max_length=200)]


def create_api(
    app: App,
    *,
    tokens: Mapping[str, Scope] | None = None,
    max_body_size: int | None = None,
    webhooks: WebhookPolicy | None = None,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
) -> FastAPI:
    """Build the FastAPI application that serves ``app``'s queues, jobs and breakers.

    ``tokens`` maps bearer tokens to scopes (none: no authentication).
    ``max_body_size`` caps a request body in bytes, checked while the body
    streams in; the default is ``app.max_message_size`` plus 64 KiB.
    ``body_timeout`` is the seconds a client has to send the whole body once
    its headers arrive; a later body gets 408.
    ``webhooks`` decides which callback URLs enqueue accepts; the default
    reads ``SLUICEGATE_WEBHOOK_HOSTS`` (see :mod:`sluicegate.webhooks`).
    """
    limit = max_body_size or app.max_message_size + BODY_SIZE_MARGIN
    state = _State(app, webhooks or WebhookPolicy.from_environment())

    @asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        yield
        # The server has finished its requests by now; this waits for enqueues whose
        # requests it cancelled at its shutdown timeout.
        state.enqueue_executor.shutdown(wait=True)

    api = FastAPI(
        title="sluicegate",
        version=__version__,
        description="Enqueue and follow jobs, inspect queues and dead letters.",
        redoc_url=None,
        telemetry={"tracing": False, "metrics": False, "logs": False},
        lifespan=lifespan,
    )
    # Every route checks its token before FastAPI reads the body.
    api.router.route_class = AuthenticatedRoute
    read = [Depends(requirement(tokens or {}, Scope.READ))]
    write = [Depends(requirement(tokens or {}, Scope.WRITE))]
    api.add_middleware(BodyLimits, max_bytes=limit, timeout=body_timeout)
    _add_error_handlers(api)
    _add_probe_routes(api, state, read)
    _add_job_routes(api, state, read, write)
    _add_queue_routes(api, state, read, write)
    _add_breaker_routes(api, state, read, write)
    return api


class _State:
    """Shared state of the handlers: the app, its backend, metrics and the webhook policy."""

    def __init__(self, app: App, webhooks: WebhookPolicy) -> None:
        self.app = app
        self.webhooks = webhooks
        self.metrics = ApiMetrics(lambda: app.backend.stats(), app.bounds, self.breaker_snapshots)
        self.enqueue_executor = ThreadPoolExecutor(
            ENQUEUE_THREADS, thread_name_prefix="sluicegate-enqueue"
        )

    def known_queues(self) -> dict[str, QueueStats]:
        """Return stats of every queue in the store or named by a task, by name."""
        found = {stats.name: stats for stats in self.app.backend.stats()}
        for task in self.app.tasks.values():
            name = task.options.queue
            if name not in found:
                found[name] = QueueStats(name, 0, 0, 0, 0, None, 0, None)
        return dict(sorted(found.items()))

    def queue_body(self, stats: QueueStats) -> dict[str, Any]:
        bounds = self.app.bounds(stats.name)
        return schemas.queue_body(stats, bounds.max_length, bounds.max_wait)

    def breaker_body(self, name: str) -> dict[str, Any]:
        snapshot = breaker_of(self.app, name).state()
        return schemas.breaker_body(snapshot, declared=name in self.app.breakers)

    def breaker_snapshots(self) -> list[BreakerSnapshot]:
        """Return a snapshot of every known breaker, leaving out (and logging) unreadable ones."""
        snapshots = []
        for breaker in known_breakers(self.app):
            try:
                snapshots.append(breaker.state())
            except StoreUnavailable as exc:
                logger.error(
                    "breaker state unavailable for metrics name=%s error=%s", breaker.name, exc
                )
        return snapshots


def _add_error_handlers(api: FastAPI) -> None:
    @api.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The default handler echoes each invalid input, and an input such as NaN
        # cannot be written back as JSON; the location and message name the field.
        errors = [
            {key: value for key, value in error.items() if key in ("loc", "msg", "type")}
            for error in exc.errors()
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    @api.exception_handler(StoreUnavailable)
    async def store_unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
        logger.error("store unavailable path=%s error=%s", request.url.path, exc)
        return JSONResponse(
            {"detail": f"the store is unavailable: {exc}"},
            status_code=503,
            headers={"Retry-After": str(STORE_RETRY_AFTER)},
        )


def _add_probe_routes(api: FastAPI, state: _State, read: list[Any]) -> None:
    @api.get("/healthz", response_model=HealthBody, tags=["probes"])
    async def healthz() -> dict[str, str]:
        """Report that the process is up; does not touch the store."""
        return {"status": "ok"}

    @api.get(
        "/readyz",
        response_model=HealthBody,
        responses={503: {"model": HealthBody}},
        tags=["probes"],
    )
    async def readyz() -> Response:
        """Report whether the store responds (200), or 503 when it does not."""
        try:
            await asyncio.to_thread(state.app.backend.ping)
        except Exception as exc:
            logger.warning("readiness check failed error=%s", exc)
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ready"})

    # A HEAD request gets the status and headers of GET, and uvicorn drops the body.
    # The OpenAPI document lists only GET, because both methods would share one
    # operation id.
    for path, probe in (("/healthz", healthz), ("/readyz", readyz)):
        api.add_api_route(path, probe, methods=["HEAD"], include_in_schema=False)

    @api.get(
        "/metrics",
        dependencies=read,
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **_ERRORS},
        tags=["probes"],
    )
    def metrics() -> Response:
        """Return Prometheus metrics: this server's counters and queue gauges."""
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _add_job_routes(api: FastAPI, state: _State, read: list[Any], write: list[Any]) -> None:
    app = state.app

    async def enqueue(queue: QueueName, body: EnqueueRequest) -> Response:
        """Enqueue a call of a task; 202 with the job, or 200 for a known idempotency key."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(state.enqueue_executor, _enqueue, state, queue, body)

    # The busiest route: JsonBodyRoute parses its body and calls it without FastAPI's
    # worker-thread hops, and _enqueue checks the returned job against JobBody itself.
    api.router.add_api_route(
        "/v1/queues/{queue}/jobs",
        enqueue,
        methods=["POST"],
        route_class_override=JsonBodyRoute,
        dependencies=write,
        status_code=202,
        response_model=JobBody,
        responses={
            200: {"model": JobBody, "description": "Replay of a known idempotency key."},
            408: {"model": DetailBody, "description": "The body did not arrive in time."},
            409: {"model": DetailBody, "description": "The key belongs to a job of another task."},
            413: {"model": DetailBody},
            **_ERRORS,
            503: {"model": QueueFullBody, "description": "The queue is full; see Retry-After."},
        },
        tags=["jobs"],
    )

    @api.get(
        "/v1/jobs/{job_id}",
        dependencies=read,
        response_model=JobBody,
        responses={**_NOT_FOUND, **_ERRORS},
        tags=["jobs"],
    )
    def get_job(job_id: JobId) -> Any:
        """Return the job's record; 404 if it never existed or its retention ended."""
        record = app.backend.get_job(job_id)
        if record is None:
            raise HTTPException(404, _not_found(job_id))
        return schemas.job_body(record)

    @api.delete(
        "/v1/jobs/{job_id}",
        dependencies=write,
        response_model=JobBody,
        responses={**_NOT_FOUND, **_ERRORS},
        tags=["jobs"],
    )
    def cancel_job(job_id: JobId) -> Any:
        """Cancel a job and return its record after the request.

        A scheduled, queued or retrying job becomes ``cancelled`` at once. A
        running job gets ``cancel_requested``, which its worker honours at
        its next check. A final job is returned unchanged.
        """
        record = app.backend.request_cancel(job_id, app.retention)
        if record is None:
            raise HTTPException(404, _not_found(job_id))
        logger.info("job cancel requested job_id=%s state=%s", job_id, record.state.value)
        return schemas.job_body(record)

    @api.get(
        "/v1/jobs/{job_id}/events",
        dependencies=read,
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "Server-Sent Events, one per change of the record.",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            204: {"description": "The client has the final event already."},
            **_NOT_FOUND,
            **_ERRORS,
        },
        tags=["jobs"],
    )
    async def job_events(
        job_id: JobId,
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    ) -> Response:
        """Stream the job's record at each change, as Server-Sent Events, until it is final.

        Send ``Last-Event-ID`` to resume after the event with that id. When
        the client has the final event already, the response is 204, which
        tells a browser's EventSource to stop reconnecting.
        """
        record = await asyncio.to_thread(app.backend.get_job, job_id)
        if record is None:
            raise HTTPException(404, _not_found(job_id))
        seen = sse.parse_last_event_id(last_event_id)
        if sse.is_caught_up(record, seen):
            return Response(status_code=204)

        async def read() -> Any:
            return await asyncio.to_thread(app.backend.get_job, job_id)

        return StreamingResponse(
            sse.job_events(record, read, seen),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


def _add_queue_routes(api: FastAPI, state: _State, read: list[Any], write: list[Any]) -> None:
    backend = state.app.backend

    @api.get("/v1/queues", dependencies=read, response_model=list[QueueBody], tags=["queues"])
    def list_queues() -> Any:
        """Return every queue in the store or named by a task, sorted by name."""
        return [state.queue_body(stats) for stats in state.known_queues().values()]

    @api.get(
        "/v1/queues/{queue}",
        dependencies=read,
        response_model=QueueBody,
        responses={**_NOT_FOUND, **_ERRORS},
        tags=["queues"],
    )
    def get_queue(queue: QueueName) -> Any:
        """Return one queue's depth, delayed, running and dead counts, rates and bounds."""
        stats = state.known_queues().get(queue)
        if stats is None:
            raise HTTPException(404, f"queue {queue!r} not found: no task uses it, no job had it")
        return state.queue_body(stats)

    @api.get(
        "/v1/queues/{queue}/dead-letters",
        dependencies=read,
        response_model=list[DeadLetterBody],
        responses=_ERRORS,
        tags=["dead letters"],
    )
    def list_dead_letters(
        queue: QueueName, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> Any:
        """List the queue's dead letters, oldest first, at most ``limit`` of them."""
        return [schemas.dead_letter_body(d) for d in backend.dead_letters(queue, limit)]

    @api.post(
        "/v1/queues/{queue}/dead-letters/retry",
        dependencies=write,
        response_model=CountBody,
        responses=_ERRORS,
        tags=["dead letters"],
    )
    def retry_all_dead(queue: QueueName) -> Any:
        """Put every dead letter of the queue back on it; return how many."""
        return {"count": backend.retry_dead(queue, None)}

    @api.post(
        "/v1/queues/{queue}/dead-letters/{message_id}/retry",
        dependencies=write,
        response_model=CountBody,
        responses={**_NOT_FOUND, **_ERRORS},
        tags=["dead letters"],
    )
    def retry_dead(queue: QueueName, message_id: str) -> Any:
        """Put one dead letter back on its queue; 404 if it is not a dead letter there."""
        count = backend.retry_dead(queue, [message_id])
        if count == 0:
            raise HTTPException(404, f"no dead letter {message_id!r} in queue {queue!r}")
        return {"count": count}

    @api.delete(
        "/v1/queues/{queue}/dead-letters",
        dependencies=write,
        response_model=CountBody,
        responses=_ERRORS,
        tags=["dead letters"],
    )
    def purge_dead(queue: QueueName) -> Any:
        """Delete every dead letter of the queue; return how many."""
        return {"count": backend.purge_dead(queue, None)}


def _add_breaker_routes(api: FastAPI, state: _State, read: list[Any], write: list[Any]) -> None:
    app = state.app

    def require_known(name: str) -> None:
        if not is_known_breaker(app, name):
            raise HTTPException(
                404,
                f"breaker {name!r} not found: the app does not declare it and no state is stored",
            )

    @api.get(
        "/v1/breakers",
        dependencies=read,
        response_model=list[BreakerBody],
        responses=_ERRORS,
        tags=["breakers"],
    )
    def list_breakers() -> Any:
        """Return every breaker the app declares or the store has a state for, by name."""
        return [state.breaker_body(breaker.name) for breaker in known_breakers(app)]

    @api.get(
        "/v1/breakers/{name}",
        dependencies=read,
        response_model=BreakerBody,
        responses={**_NOT_FOUND, **_ERRORS},
        tags=["breakers"],
    )
    def get_breaker(name: BreakerName) -> Any:
        """Return one breaker's state, failure rate, counts and next probe time."""
        require_known(name)
        return state.breaker_body(name)

    @api.post(
        "/v1/breakers/{name}/reset",
        dependencies=write,
        response_model=BreakerBody,
        responses={**_NOT_FOUND, **_ERRORS},
        tags=["breakers"],
    )
    def reset_breaker(name: BreakerName) -> Any:
        """Close the breaker in every process and forget its call counts; return its new state."""
        require_known(name)
        breaker_of(app, name).reset()
        logger.info("breaker reset over http name=%s", name)
        return state.breaker_body(name)

    @api.post(
        "/v1/breakers/{name}/force-open",
        dependencies=write,
        response_model=BreakerBody,
        responses={**_NOT_FOUND, **_ERRORS},
        tags=["breakers"],
    )
    def force_open_breaker(name: BreakerName, body: ForceOpenRequest | None = None) -> Any:
        """Open the breaker in every process for ``duration`` seconds; return its new state.

        Without a body, or without ``duration``, it stays open for its reset
        timeout. After that it admits half-open probes as usual.
        """
        require_known(name)
        duration = None if body is None else body.duration
        breaker_of(app, name).force_open(duration)
        logger.info("breaker forced open over http name=%s duration_s=%s", name, duration)
        return state.breaker_body(name)


def _enqueue(state: _State, queue: str, body: EnqueueRequest) -> Response:
    """Check, encode and enqueue one call; return the job's response or raise HTTPException.

    It blocks on the store, so it runs on ``state.enqueue_executor``.
    """
    app = state.app
    new = _prepare(state, queue, body)
    try:
        (result,) = app.backend.enqueue_jobs([new], app.bounds(queue))
    except QueueFull as exc:
        state.metrics.rejected.labels(queue, new.task, exc.reason).inc()
        logger.debug("job rejected queue=%s task=%s reason=%s", queue, new.task, exc.reason)
        return _queue_full_response(exc)
    record = app.backend.get_job(result.job_id)
    if record is None:  # Expired between the two calls: only with a tiny retention.
        raise HTTPException(404, f"job {result.job_id} expired right after enqueue")
    if not result.created and record.task != new.task:
        # NOTE: a job record keeps its task but not its arguments, so a replay
        # of the key with other args or kwargs for the same task cannot be
        # distinguished from a retry, and it returns the existing job.
        raise HTTPException(
            409,
            f"idempotency key {new.idempotency_key!r} belongs to job {record.id} of task "
            f"{record.task!r}, not {new.task!r}; use another key for another call",
        )
    if not result.created:
        return _job_response(record, 200)
    state.metrics.enqueued.labels(queue, new.task).inc()
    logger.debug("job enqueued job_id=%s task=%s queue=%s", record.id, new.task, queue)
    return _job_response(record, 202)


def _job_response(record: JobRecord, status_code: int) -> Response:
    """Return the job as the JSON that FastAPI writes for a ``JobBody``, with ``Location``."""
    content = JobBody.model_validate(schemas.job_body(record)).model_dump_json()
    return Response(
        content,
        status_code,
        headers={"Location": f"/v1/jobs/{record.id}"},
        media_type="application/json",
    )


def _prepare(state: _State, queue: str, body: EnqueueRequest) -> NewJob:
    """Check an enqueue request against the task and encode it; raise 422 or 413."""
    task = state.app.tasks.get(body.task)
    if task is None:
        raise _unprocessable("task", f"no task named {body.task!r} is registered", "unknown_task")
    if task.options.queue != queue:
        raise HTTPException(
            422,
            [
                {
                    "loc": ["path", "queue"],
                    "msg": f"task {task.name!r} runs on queue {task.options.queue!r}, "
                    f"not {queue!r}; POST to /v1/queues/{task.options.queue}/jobs",
                    "type": "wrong_queue",
                }
            ],
        )
    if body.callback_url is not None:
        reason = state.webhooks.check(body.callback_url)
        if reason is not None:
            raise _unprocessable("callback_url", reason, "callback_rejected")
    try:
        args = codec.from_json(body.args)
        kwargs = codec.from_json(body.kwargs)
    except DecodeError as exc:
        raise _unprocessable("args", f"invalid tagged value: {exc.reason}", "decode") from None
    field = "kwargs" if body.kwargs else "args"
    try:
        new = task.prepare(
            tuple(args),
            kwargs,
            body.delay,
            body.eta,
            body.priority,
            body.idempotency_key,
            callback_url=body.callback_url,
        )
    except InvalidArguments as exc:
        raise _unprocessable(field, str(exc), "invalid_arguments") from None
    except EncodeError as exc:
        raise _unprocessable(field, str(exc), "encode") from None
    except PayloadTooLarge as exc:
        raise HTTPException(413, str(exc)) from None
    except ConfigurationError as exc:
        raise _unprocessable("body", str(exc), "invalid_option") from None
    return new


def _unprocessable(field: str, message: str, kind: str) -> HTTPException:
    location = ["body"] if field == "body" else ["body", field]
    return HTTPException(422, [{"loc": location, "msg": message, "type": kind}])


def _queue_full_response(exc: QueueFull) -> JSONResponse:
    seconds = min(max(math.ceil(exc.retry_after), 1), int(MAX_RETRY_AFTER))
    body = {
        "detail": str(exc),
        "queue": exc.queue,
        "reason": exc.reason,
        "limit": exc.limit,
        "retry_after": exc.retry_after,
    }
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(seconds)})


def _not_found(job_id: str) -> str:
    return f"job {job_id!r} not found: never enqueued, or its record expired"
