"""The load generator: posts at rising rates through ``sluicegate.Client``.

Each post is written to the social database and its author's timeline at
once, then split into delivery jobs of ``batch_size`` followers, which the
client enqueues over HTTP. A post counts as accepted once all its jobs are
enqueued. While the fan-out queue is full the server responds with 503 and the
client retries with backoff, so posters block and the accepted rate falls
behind the offered rate: that is the back pressure the demo shows.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from sluicegate.demo.fanout import social
from sluicegate.demo.fanout.config import DELIVER_TASK, QUEUE
from sluicegate.errors import QueueFull, Unavailable
from sluicegate.http.client import ApiError, Client

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RateStep:
    """Offer ``rate`` posts per second for ``seconds`` seconds."""

    rate: float
    seconds: float

    @property
    def posts(self) -> int:
        return max(1, round(self.rate * self.seconds))


class CountingTransport(httpx.BaseTransport):
    """An httpx transport that counts enqueue requests by response status.

    The client retries inside ``Client.request``, so counting at the
    transport counts every attempt, including those that got a 503.
    """

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self._lock = threading.Lock()
        self.statuses: Counter[int] = Counter()
        self.transport_errors = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        is_enqueue = request.method == "POST" and request.url.path.endswith("/jobs")
        try:
            response = self._inner.handle_request(request)
        except httpx.TransportError:
            if is_enqueue:
                with self._lock:
                    self.transport_errors += 1
            raise
        if is_enqueue:
            with self._lock:
                self.statuses[response.status_code] += 1
        return response

    def close(self) -> None:
        self._inner.close()

    @property
    def attempts(self) -> int:
        with self._lock:
            return sum(self.statuses.values()) + self.transport_errors


@dataclass(frozen=True, slots=True)
class LoadSnapshot:
    """The load generator's counters at one moment."""

    step: int
    rate: float
    offered: int
    accepted: int
    failed: int
    jobs: int
    rejected_503: int
    retries: int


class LoadGenerator:
    """Offers posts at each :class:`RateStep` in turn from a pool of poster threads.

    Post ``n`` (from 1) is written by ``authors[n - 1]``, so the number of
    posts is at most ``len(authors)`` and the sum of the steps' ``posts``. Offering stops
    when the steps end or :meth:`stop` is called, whichever is first, and
    :meth:`run` then waits at most ``drain_timeout`` seconds for the posters.
    """

    def __init__(
        self,
        client: Client,
        transport: CountingTransport,
        social_path: Path,
        authors: Sequence[int],
        steps: Sequence[RateStep],
        *,
        batch_size: int,
        posters: int,
        drain_timeout: float,
    ) -> None:
        self._client = client
        self._transport = transport
        self._social_path = social_path
        self._authors = list(authors)
        self._steps = list(steps)
        self._batch_size = batch_size
        self._posters = posters
        self._drain_timeout = drain_timeout
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._step = 0
        self._offered = 0
        self._accepted = 0
        self._failed = 0
        self._jobs = 0
        self._enqueue_calls = 0

    def stop(self) -> None:
        self._stop.set()

    def snapshot(self) -> LoadSnapshot:
        with self._lock:
            step, offered, accepted = self._step, self._offered, self._accepted
            failed, jobs, calls = self._failed, self._jobs, self._enqueue_calls
        rate = self._steps[min(step, len(self._steps) - 1)].rate
        return LoadSnapshot(
            step=step + 1,
            rate=rate,
            offered=offered,
            accepted=accepted,
            failed=failed,
            jobs=jobs,
            rejected_503=self._transport.statuses[503],
            retries=max(0, self._transport.attempts - calls),
        )

    def run(self) -> None:
        """Offer every step's posts on schedule, then wait for the posters to finish."""
        futures: list[Future[None]] = []
        post_id = 0
        with ThreadPoolExecutor(self._posters, thread_name_prefix="poster") as pool:
            for index, step in enumerate(self._steps):
                with self._lock:
                    self._step = index
                started = time.monotonic()
                for number in range(step.posts):
                    if self._stop.wait(max(0.0, started + number / step.rate - time.monotonic())):
                        break
                    if post_id >= len(self._authors):
                        break
                    author = self._authors[post_id]
                    post_id += 1
                    futures.append(pool.submit(self._post, post_id, author))
                    with self._lock:
                        self._offered += 1
                if self._stop.is_set():
                    break
            self._wait(futures)

    def _wait(self, futures: list[Future[None]]) -> None:
        deadline = time.monotonic() + self._drain_timeout
        for future in futures:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._stop.is_set():
                break
            future.exception(timeout=remaining)
        self._stop.set()  # Posters that have not started yet return at once.
        for future in futures:
            future.cancel()

    def _post(self, post_id: int, author: int) -> None:
        if self._stop.is_set():
            return
        conn = self._connection()
        followers = social.followers(conn, author)
        social.write_post(conn, post_id, author, f"post {post_id} by user {author}")
        try:
            for start in range(0, len(followers), self._batch_size):
                batch = followers[start : start + self._batch_size]
                with self._lock:
                    self._enqueue_calls += 1
                self._client.enqueue(
                    QUEUE,
                    DELIVER_TASK,
                    [post_id, batch],
                    idempotency_key=f"post-{post_id}-from-{start}",
                )
                with self._lock:
                    self._jobs += 1
        except (QueueFull, Unavailable, ApiError) as exc:
            logger.warning("post not accepted post_id=%d author=%d: %s", post_id, author, exc)
            with self._lock:
                self._failed += 1
            return
        social.mark_accepted(conn, post_id)
        with self._lock:
            self._accepted += 1

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = social.connect(self._social_path)
            self._local.conn = conn
        return conn
