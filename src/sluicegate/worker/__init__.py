"""The worker: reserve loop, pools, heartbeats and shutdown."""

from sluicegate.worker.worker import Worker

__all__ = ["Worker"]
