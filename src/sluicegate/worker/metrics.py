"""Prometheus metrics of one worker process, served on ``--metrics-port``.

Each worker exports its own counters: Prometheus scrapes every worker and
sums them. Loading needs prometheus-client (the ``http`` extra); a worker
started without ``--metrics-port`` never imports it and pays nothing.
"""

from __future__ import annotations

import logging
import time

from sluicegate.broker import Action, Settlement
from sluicegate.store import JobState

logger = logging.getLogger(__name__)

#: Histogram buckets, in seconds, for queue wait and run time.
BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 1800.0)


class WorkerMetrics:
    """Counters of job outcomes by queue and task, and wait and run time histograms."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

        self.registry = CollectorRegistry()
        labels = ["queue", "task"]

        def counter(name: str, text: str) -> Counter:
            return Counter(f"sluicegate_jobs_{name}_total", text, labels, registry=self.registry)

        self.started = counter("started", "Attempts started by this worker.")
        self.outcomes = {
            "succeeded": counter("succeeded", "Jobs that succeeded."),
            "failed": counter("failed", "Jobs that failed (dead-lettered ones included)."),
            "retried": counter("retried", "Attempts that failed and were scheduled again."),
            "dead_lettered": counter("dead_lettered", "Jobs moved to the dead-letter queue."),
            "cancelled": counter("cancelled", "Jobs cancelled while this worker held them."),
        }
        self.deferred = counter(
            "deferred", "Jobs given back unrun by an open breaker or a busy rate limit."
        )
        self.queue_wait = Histogram(
            "sluicegate_job_queue_wait_seconds",
            "Seconds from enqueue to the start of an attempt.",
            labels,
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.run_time = Histogram(
            "sluicegate_job_run_seconds",
            "Seconds one attempt ran.",
            labels,
            buckets=BUCKETS,
            registry=self.registry,
        )
        start_http_server(port, addr=host, registry=self.registry)
        logger.info("worker metrics listening host=%s port=%d", host, port)

    def job_started(self, queue: str, task: str, enqueued_at: float) -> None:
        """Count an attempt and observe how long its message waited since enqueue."""
        self.started.labels(queue, task).inc()
        self.queue_wait.labels(queue, task).observe(max(time.time() - enqueued_at, 0.0))

    def job_settled(self, task: str, settlement: Settlement, run_seconds: float) -> None:
        """Count the outcome that ``settlement`` records and observe the run time."""
        queue = settlement.delivery.queue
        if settlement.action is Action.DEFER:
            self.deferred.labels(queue, task).inc()
            return
        self.run_time.labels(queue, task).observe(run_seconds)
        state = settlement.job.state if settlement.job is not None else None
        if settlement.action is Action.DEAD:
            self.outcomes["dead_lettered"].labels(queue, task).inc()
        if settlement.action is Action.RETRY:
            self.outcomes["retried"].labels(queue, task).inc()
        elif state is not None and state.is_final:
            name = {JobState.SUCCEEDED: "succeeded", JobState.FAILED: "failed"}.get(
                state, "cancelled"
            )
            self.outcomes[name].labels(queue, task).inc()
