"""The worker: reserve loop, pools, heartbeats and shutdown.

Two workers share one job-handling core (:mod:`sluicegate.worker.core`):
:class:`Worker` runs on an asyncio loop and serves every pool;
:class:`ThreadWorker` serves only sync thread-pool tasks and never imports
asyncio. :func:`worker_class` picks one for an app. Importing this package
loads neither; each loads on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sluicegate.worker.threaded import ThreadWorker
    from sluicegate.worker.worker import Worker

__all__ = ["ThreadWorker", "Worker", "needs_event_loop", "worker_class"]


def needs_event_loop(app: Any) -> bool:
    """Return whether a task of ``app`` is ``async`` or ``pool="process"``."""
    return any(task.options.pool != "thread" for task in app.tasks.values())


def worker_class(app: Any) -> type[Worker] | type[ThreadWorker]:
    """Return :class:`Worker` if ``app`` needs an event loop, else :class:`ThreadWorker`."""
    if needs_event_loop(app):
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
