"""A failing downstream service behind a shared breaker, and a fleet-wide rate limit.

The downstream is a real HTTP server on loopback that counts the requests
it receives; the jobs run on real worker processes.
"""

from __future__ import annotations

import time

import pytest

from .downstream import Downstream, max_in_window
from .support import AppModule, MakeApp, StartWorker, on_both_drivers, wait_until

#: Sync thread-pool tasks, which both drivers run.
SYNC_SOURCE = """
import urllib.error
import urllib.request

URL = %(url)r
RETRY = Backoff(base=0.2, cap=1.0)

app.breaker(
    "downstream",
    minimum_calls=%(minimum_calls)d,
    window=30,
    reset_timeout=1.0,
    max_reset_timeout=2.0,
    half_open_calls=%(half_open_calls)d,
    failure_types=(ConnectionError,),
)
app.retry_budget("contrast", ratio=None)  # the contrast shows retries left unchecked


def fetch():
    try:
        with urllib.request.urlopen(URL, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        raise ConnectionError("downstream answered %%d" %% exc.code) from None


@app.task(breaker="downstream", retries=5, backoff=RETRY)
def guarded(n):
    return fetch()


@app.task(queue="contrast", retries=5, backoff=RETRY)
def unguarded(n):
    return fetch()


@app.task(queue="limited", rate_limit="%(rate)d/s")
def limited(n):
    return fetch()
"""

JOBS = 500
MINIMUM_CALLS = 20
HALF_OPEN_CALLS = 3
CONCURRENCY = 8
WORKERS = 2
RATE = 20


def make_source(url: str) -> str:
    return SYNC_SOURCE % {
        "url": url,
        "minimum_calls": MINIMUM_CALLS,
        "half_open_calls": HALF_OPEN_CALLS,
        "rate": RATE,
    }


@on_both_drivers
def test_breaker_spares_a_failing_downstream(
    make_app: MakeApp, start_worker: StartWorker, capsys: pytest.CaptureFixture[str]
) -> None:
    with Downstream() as server:
        server.set_down(True)
        module = make_app(make_source(server.url), lease=10.0)
        workers = [
            start_worker(module, "--concurrency", str(CONCURRENCY), "--queues", "default")
            for _ in range(WORKERS)
        ]
        jobs = module.task("guarded").enqueue_many(((n,), {}) for n in range(JOBS))

        def openings() -> int:
            return sum(w.log().count("breaker opened name=downstream") for w in workers)

        # Down through the first opening and two failed half-open rounds.
        wait_until(lambda: openings() >= 3, timeout=60, what="the breaker to reopen twice")
        server.set_down(False)
        down_calls = len(server.times(while_down=True))
        half_open_rounds = sum(w.log().count("breaker half-open name=downstream") for w in workers)
        down_seconds = max(server.times()) - min(server.times())
        records = module.wait_final([job.id for job in jobs], timeout=120)

        # Calls admitted while closed stop at minimum_calls, plus those in flight when the
        # breaker opened. Each half-open round then admits at most its probes.
        in_flight = WORKERS * CONCURRENCY
        allowed = MINIMUM_CALLS + in_flight + HALF_OPEN_CALLS * half_open_rounds
        assert down_calls <= allowed
        assert {r.state.value for r in records.values()} == {"succeeded"}
        assert module.app.queue("default").dead_letters() == []
        assert max(r.attempts for r in records.values()) <= 6

        contrast_calls, contrast_dead = run_without_breaker(
            module, start_worker, server, down_seconds
        )

    with capsys.disabled():
        print(
            f"\n{JOBS} jobs, downstream down {down_seconds:.1f}s: with the breaker it received "
            f"{down_calls} calls while down ({half_open_rounds} half-open rounds) and no job "
            f"was dead-lettered; without it, {contrast_calls} calls while down and "
            f"{contrast_dead} jobs dead-lettered"
        )
    assert contrast_calls > down_calls


def run_without_breaker(
    module: AppModule, start_worker: StartWorker, server: Downstream, down_seconds: float
) -> tuple[int, int]:
    """Run the same jobs with no breaker through an outage as long; return (calls, dead)."""
    before = len(server.times(while_down=True))
    server.set_down(True)
    for _ in range(WORKERS):
        start_worker(module, "--concurrency", str(CONCURRENCY), "--queues", "contrast")
    jobs = module.task("unguarded").enqueue_many(((n,), {}) for n in range(JOBS))
    ids = [job.id for job in jobs]
    # The outage counts from the first call, as the first run's did.
    outage_start = wait_until(
        lambda: server.times(while_down=True)[before:], timeout=60, what="a first call"
    )[0]

    def outage_over() -> bool:
        if time.time() - outage_start >= down_seconds:
            return True
        return all(r.state.is_final for r in module.records(ids).values())

    wait_until(outage_over, timeout=60, what="an outage as long as the first")
    server.set_down(False)
    module.wait_final(ids, timeout=120)
    calls = len(server.times(while_down=True)) - before
    return calls, len(module.app.queue("contrast").dead_letters(limit=JOBS))


def test_rate_limit_holds_across_workers(make_app: MakeApp, start_worker: StartWorker) -> None:
    with Downstream() as server:
        module = make_app(make_source(server.url), lease=10.0)
        # One bucket in the store, shared by a fleet that runs both drivers.
        for loop in ("asyncio", "threads", "threads"):
            args = ("--loop", loop, "--concurrency", str(CONCURRENCY), "--queues", "limited")
            start_worker(module, *args)
        jobs = module.task("limited").enqueue_many(((n,), {}) for n in range(400))
        records = module.wait_final([job.id for job in jobs], timeout=120)
        times = server.times()

    burst = RATE  # the default burst: one second's worth of tokens
    assert {r.state.value for r in records.values()} == {"succeeded"}
    assert max(r.attempts for r in records.values()) == 1
    assert len(times) == 400
    assert max_in_window(times, 1.0) <= RATE + burst
    assert max(times) - min(times) >= (400 - burst) / RATE - 1.0
