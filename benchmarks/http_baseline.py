"""A bare Starlette app with the route of sluicegate's HTTP enqueue, for http_enqueue.py.

`POST /v1/queues/{queue}/jobs` parses the JSON body, checks that it names a task and
returns 202 with a small JSON body. It touches no store, so it measures what uvicorn,
Starlette and JSON parsing cost on their own.

Run as `python benchmarks/http_baseline.py`. It binds a free port on 127.0.0.1, prints
`baseline listening url=http://127.0.0.1:PORT`, and serves on uvicorn with the settings
of `sluicegate serve`. These are the listening socket bound by the same function, uvicorn's
h11 protocol, `log_config=None`, no access log (the default of `sluicegate serve`) and the
same keep-alive and shutdown timeouts. Log lines are at WARNING and above, and the objects
made at start-up are frozen out of garbage collection.
"""

from __future__ import annotations

import gc
import logging

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sluicegate.cli.serve import KEEP_ALIVE_TIMEOUT, _bind


async def enqueue(request: Request) -> JSONResponse:
    body = await request.json()
    if not isinstance(body, dict) or not isinstance(body.get("task"), str):
        return JSONResponse({"detail": "the body must name a task"}, status_code=422)
    queue = request.path_params["queue"]
    return JSONResponse({"task": body["task"], "queue": queue, "state": "queued"}, status_code=202)


app = Starlette(routes=[Route("/v1/queues/{queue}/jobs", enqueue, methods=["POST"])])


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    sock = _bind("127.0.0.1", 0)
    print(f"baseline listening url=http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(
        app,
        http="h11",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        timeout_keep_alive=KEEP_ALIVE_TIMEOUT,
    )
    server = uvicorn.Server(config)
    gc.collect()
    gc.freeze()
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
