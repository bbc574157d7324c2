"""LoopThreadPool: sync calls on threads, their outcomes resolved on the event loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from sluicegate.worker.threads import LoopThreadPool

#: Upper bound, in seconds, on waiting for calls that return at once.
CALL_TIMEOUT = 5.0


def test_result_resolved_on_loop() -> None:
    callbacks_on: list[threading.Thread] = []

    async def scenario() -> int:
        pool = LoopThreadPool(2, "test-pool")
        try:
            future = pool.submit(lambda a, b: a + b, 2, 3)
            future.add_done_callback(lambda _: callbacks_on.append(threading.current_thread()))
            result = await asyncio.wait_for(future, CALL_TIMEOUT)
            await asyncio.sleep(0)  # let the done callback run
            return result
        finally:
            pool.shutdown(wait=True)

    assert asyncio.run(scenario()) == 5
    assert callbacks_on == [threading.main_thread()]


def test_exception_resolved_on_loop() -> None:
    def fail() -> None:
        raise KeyError("missing")

    async def scenario() -> None:
        pool = LoopThreadPool(1, "test-pool")
        try:
            await asyncio.wait_for(pool.submit(fail), CALL_TIMEOUT)
        finally:
            pool.shutdown(wait=True)

    with pytest.raises(KeyError, match="missing"):
        asyncio.run(scenario())


def test_single_thread_keeps_order() -> None:
    ran: list[int] = []

    async def scenario() -> None:
        pool = LoopThreadPool(1, "test-pool")
        try:
            futures = [pool.submit(ran.append, i) for i in range(200)]
            await asyncio.wait_for(asyncio.gather(*futures), CALL_TIMEOUT)
        finally:
            pool.shutdown(wait=True)

    asyncio.run(scenario())

    assert ran == list(range(200))


def test_threads_bounded_by_size() -> None:
    release = threading.Event()
    lock = threading.Lock()
    running = [0, 0]  # now, maximum

    def block() -> None:
        with lock:
            running[0] += 1
            running[1] = max(running)
        release.wait(CALL_TIMEOUT)
        with lock:
            running[0] -= 1

    async def scenario() -> int:
        pool = LoopThreadPool(3, "test-pool")
        try:
            futures = [pool.submit(block) for _ in range(10)]
            for _ in range(int(CALL_TIMEOUT / 0.01)):
                if running[0] == 3:
                    break
                await asyncio.sleep(0.01)
            threads = len(pool._threads)
            release.set()
            await asyncio.wait_for(asyncio.gather(*futures), CALL_TIMEOUT)
            return threads
        finally:
            pool.shutdown(wait=True)

    threads = asyncio.run(scenario())

    assert threads == 3
    assert running[1] == 3


def test_shutdown_cancels_queued_calls() -> None:
    started, release = threading.Event(), threading.Event()
    ran: list[int] = []

    def block() -> None:
        started.set()
        release.wait(CALL_TIMEOUT)

    async def scenario() -> tuple[asyncio.Future[None], list[asyncio.Future[None]]]:
        pool = LoopThreadPool(1, "test-pool")
        running = pool.submit(block)
        started.wait(CALL_TIMEOUT)
        queued = [pool.submit(ran.append, i) for i in range(3)]
        pool.shutdown(cancel_queued=True)
        release.set()
        await asyncio.wait_for(running, CALL_TIMEOUT)
        return running, queued

    running, queued = asyncio.run(scenario())

    assert running.done()
    assert not running.cancelled()
    assert all(future.cancelled() for future in queued)
    assert ran == []


def test_submit_after_shutdown_rejected() -> None:
    async def scenario() -> None:
        pool = LoopThreadPool(1, "test-pool")
        pool.shutdown()
        pool.submit(print)

    with pytest.raises(RuntimeError, match="shut down"):
        asyncio.run(scenario())


def test_call_finishing_after_loop_closed() -> None:
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def linger() -> None:
        started.set()
        release.wait(CALL_TIMEOUT)

    async def scenario() -> LoopThreadPool:
        pool = LoopThreadPool(1, "test-pool")
        pool.submit(linger).add_done_callback(lambda _: finished.set())
        started.wait(CALL_TIMEOUT)
        return pool

    pool = asyncio.run(scenario())  # closes the loop while linger() still runs
    release.set()
    pool.shutdown(wait=True)

    assert started.is_set()
    assert not finished.is_set()
    assert not any(thread.is_alive() for thread in pool._threads)
