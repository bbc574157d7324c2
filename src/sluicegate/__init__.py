"""sluicegate: a task queue and message queue with back pressure, leases and job status."""

from sluicegate.app import App
from sluicegate.breaker import Breaker
from sluicegate.broker import QueueBounds, QueueStats
from sluicegate.context import JobContext, job_context
from sluicegate.errors import (
    BreakerOpen,
    Cancelled,
    ConfigurationError,
    DeadlineExceeded,
    DecodeError,
    EncodeError,
    Fail,
    InvalidArguments,
    JobCancelled,
    JobFailed,
    JobNotFound,
    JobTimeout,
    LeaseLost,
    PayloadTooLarge,
    QueueFull,
    Retry,
    SluicegateError,
    StoreUnavailable,
    TaskTimeout,
    Unavailable,
    UnknownTask,
    UnsupportedBackend,
)
from sluicegate.job import Job
from sluicegate.queue import Message, Queue
from sluicegate.retry import Backoff
from sluicegate.store import JobRecord, JobState
from sluicegate.task import Task

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # The HTTP clients need httpx (the ``http`` extra), so they load on first use.
    if name in ("Client", "AsyncClient"):
        from sluicegate.http import client

        return getattr(client, name)
    raise AttributeError(f"module 'sluicegate' has no attribute {name!r}")


__all__ = [
    # application and tasks
    "App",
    "Backoff",
    "Task",
    # jobs
    "Job",
    "JobContext",
    "JobRecord",
    "JobState",
    "job_context",
    # circuit breakers
    "Breaker",
    "BreakerOpen",
    # plain queues
    "Message",
    "Queue",
    "QueueBounds",
    "QueueStats",
    # raised by tasks
    "Cancelled",
    "Fail",
    "Retry",
    # HTTP clients
    "AsyncClient",
    "Client",
    # errors
    "ConfigurationError",
    "DeadlineExceeded",
    "DecodeError",
    "EncodeError",
    "InvalidArguments",
    "JobCancelled",
    "JobFailed",
    "JobNotFound",
    "JobTimeout",
    "LeaseLost",
    "PayloadTooLarge",
    "QueueFull",
    "SluicegateError",
    "StoreUnavailable",
    "TaskTimeout",
    "Unavailable",
    "UnknownTask",
    "UnsupportedBackend",
]
