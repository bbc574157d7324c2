"""A bare Starlette app with the route of sluicegate's HTTP enqueue, for http_enqueue.py.

`POST /v1/queues/{queue}/jobs` parses the JSON body, checks that it names a task and
returns 202 with a small JSON body. It touches no store, so it measures what uvicorn,
Starlette and JSON parsing cost on their own.

Run as `python benchmarks/http_baseline.py`. It binds a free port on 127.0.0.1, prints
`baseline listening url=http://127.0.0.1:PORT`, and serves on uvicorn with the settings
of `sluicegate serve`: the listening socket bound by the same function, `log_config=None`,
the same keep-alive and shutdown timeouts, and log lines at WARNING and above.
"""

from __future__ import annotations

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
        app, log_config=None, timeout_graceful_shutdown=5, timeout_keep_alive=KEEP_ALIVE_TIMEOUT
    )
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
