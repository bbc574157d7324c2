"""The worker: reserve loop, pools, heartbeats and shutdown.

Two workers share one job-handling core (:mod:`sluicegate.worker.core`):
:class:`Worker` runs on an asyncio loop and serves every pool;
:class:`ThreadWorker` serves only sync thread-pool tasks and never imports
asyncio. :func:`worker_class` picks one for an app. Importing this package
loads neither; each loads on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sluicegate.worker.threaded import ThreadWorker
    from sluicegate.worker.worker import Worker

__all__ = ["ThreadWorker", "Worker", "event_loop_tasks", "needs_event_loop", "worker_class"]


def event_loop_tasks(app: Any, queues: Sequence[str] | None = None) -> list[str]:
    """Return the names of the async and process tasks of ``app`` on ``queues`` (default all).

    A task's jobs go only to its own queue, so the tasks of other queues never
    reach a worker that serves ``queues``.
    """
    return sorted(
        task.name
        for task in app.tasks.values()
        if task.options.pool != "thread" and (queues is None or task.options.queue in queues)
    )


def needs_event_loop(app: Any, queues: Sequence[str] | None = None) -> bool:
    """Return whether a task of ``app`` on ``queues`` (default all) is async or a process task."""
    return bool(event_loop_tasks(app, queues))


def worker_class(
    app: Any, queues: Sequence[str] | None = None
) -> type[Worker] | type[ThreadWorker]:
    """Return :class:`Worker` if ``app`` needs an event loop on ``queues``, else ThreadWorker."""
    if needs_event_loop(app, queues):
        from sluicegate.worker.worker import Worker

        return Worker
    from sluicegate.worker.threaded import ThreadWorker

    return ThreadWorker


def __getattr__(name: str) -> Any:
    if name == "Worker":
        from sluicegate.worker.worker import Worker

        return Worker
    if name == "ThreadWorker":
        from sluicegate.worker.threaded import ThreadWorker

        return ThreadWorker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
