"""A loopback HTTP server standing in for a downstream service that can fail on demand."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Downstream:
    """A server that returns 200 to ``GET /`` while up and 503 while down, recording each request.

    Use as a context manager; ``url`` is where it listens, on 127.0.0.1 and a free port.
    """

    def __init__(self) -> None:
        self.down = False
        self.lock = threading.Lock()
        self.calls: list[tuple[float, bool]] = []  # (time, whether the server was down)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server.lock:
                    down = server.down
                    server.calls.append((time.time(), down))
                self.send_response(503 if down else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Downstream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)

    def set_down(self, down: bool) -> None:
        with self.lock:
            self.down = down

    def times(self, while_down: bool | None = None) -> list[float]:
        """Return the request times, all or only those received while down (or up)."""
        with self.lock:
            return [t for t, down in self.calls if while_down is None or down == while_down]


def max_in_window(times: list[float], width: float) -> int:
    """Return the most request times that fall in any window of ``width`` seconds."""
    ordered = sorted(times)
    best, first = 0, 0
    for last, end in enumerate(ordered):
        while end - ordered[first] >= width:
            first += 1
        best = max(best, last - first + 1)
    return best
