"""``sluicegate serve``: run the HTTP API with uvicorn."""

from __future__ import annotations

import gc
import logging
import os
import socket

import click

from sluicegate.cli._common import import_app
from sluicegate.errors import ConfigurationError

logger = logging.getLogger(__name__)

#: Seconds a client has to send a request body: ``sluicegate.http.api.DEFAULT_BODY_TIMEOUT``,
#: repeated here so that loading the CLI does not import FastAPI.
DEFAULT_BODY_TIMEOUT = 30.0

#: Seconds an idle keep-alive connection stays open after its last response.
KEEP_ALIVE_TIMEOUT = 5


@click.command()
@click.argument("app_spec", metavar="APP_MODULE:APP")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="TCP port to bind; 0 picks a free port, which the start-up log names.",
)
@click.option(
    "--max-body-size",
    default=None,
    type=click.IntRange(1),
    help="Largest request body in bytes; default: the app's max_message_size plus 64 KiB.",
)
@click.option(
    "--body-timeout",
    default=DEFAULT_BODY_TIMEOUT,
    show_default=True,
    type=click.FloatRange(0, 3600, min_open=True),
    help="Seconds a client has to send the whole request body after its headers; "
    "a slower body gets 408 and the connection is closed.",
)
@click.option(
    "--access-log/--no-access-log",
    default=False,
    show_default=True,
    help="Log one line per request (uvicorn's access log, at INFO). Off by default, "
    "because writing a line for every request adds to the CPU time of each one.",
)
def serve(
    app_spec: str,
    host: str,
    port: int,
    max_body_size: int | None,
    body_timeout: float,
    access_log: bool,
) -> None:
    """Serve the HTTP API of the app APP_MODULE:APP until SIGTERM or SIGINT.

    Bearer tokens come from SLUICEGATE_API_TOKENS, e.g. "tokA:write,tokB:read".
    Without tokens the server accepts unauthenticated requests, so it binds
    only to a loopback address.

    Slow clients: a request body must arrive whole within --body-timeout
    seconds of the headers (408 otherwise), and an idle keep-alive connection
    is closed 5 s after its last response (uvicorn's timeout_keep_alive).
    Headers are not timed: a client that connects and sends nothing, or
    stops partway through its headers, keeps its connection open until it
    closes it, because uvicorn 0.55 has no timeout for that phase. Put a
    reverse proxy with a header timeout in front of a server that untrusted
    clients reach.
    """
    import uvicorn

    from sluicegate.http.api import create_api
    from sluicegate.http.auth import TOKENS_VARIABLE, is_loopback, parse_tokens

    try:
        tokens = parse_tokens(os.environ.get(TOKENS_VARIABLE))
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    if not tokens and not is_loopback(host):
        raise click.UsageError(
            f"--host {host} is not a loopback address and {TOKENS_VARIABLE} is not set; "
            "set tokens (e.g. TOKEN:write) to serve on other interfaces"
        )
    app = import_app(app_spec)
    api = create_api(app, tokens=tokens, max_body_size=max_body_size, body_timeout=body_timeout)
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    url = f"http://[{host}]:{bound_port}" if ":" in host else f"http://{host}:{bound_port}"
    if tokens:
        logger.info("api server listening url=%s auth=bearer tokens=%d", url, len(tokens))
    else:
        logger.warning(
            "api server listening url=%s auth=none; %s is not set, so every request is "
            "accepted and the server binds to loopback only",
            url,
            TOKENS_VARIABLE,
        )
    # NOTE: uvicorn 0.55 times only idle keep-alive connections (timeout_keep_alive).
    # Its h11 protocol bounds the header size (h11_max_incomplete_event_size) but not
    # the time to send the headers. BodyLimits bounds the time to send the body.
    # h11 even where httptools is installed, because uvicorn's httptools protocol
    # has no such bound: it read a 100 MB header without a 400 (uvicorn 0.55, httptools
    # 0.9.0).
    # LingeringH11Protocol is uvicorn's h11 protocol, with a lingering close so that a
    # client still sending when the server responds early gets the response, not a reset.
    from sluicegate.http.lingering import LingeringH11Protocol

    config = uvicorn.Config(
        api,
        http=LingeringH11Protocol,
        log_config=None,
        access_log=access_log,
        timeout_graceful_shutdown=5,
        timeout_keep_alive=KEEP_ALIVE_TIMEOUT,
    )
    server = uvicorn.Server(config)
    # The app, its routes and the imported modules live as long as the server. Frozen,
    # they are left out of full garbage collections, which scan every tracked object. In
    # the HTTP benchmark of BENCHMARKS.md each such collection paused the server for about
    # 57 ms (79 ms at most), and 2 to 4 ms with these objects frozen.
    gc.collect()
    gc.freeze()
    server.run(sockets=[sock])
    logger.info("api server stopped url=%s", url)


def _bind(host: str, port: int) -> socket.socket:
    """Bind a listening TCP socket, so that port 0 resolves before the log line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # asyncio turns Nagle's algorithm off on accepted sockets only when the
    # listening socket names IPPROTO_TCP; without it each keep-alive response
    # waits about 40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise click.ClickException(f"cannot bind {host}:{port}: {exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
