"""Prometheus metrics of the API server, in the prometheus-client text format.

Where the numbers come from: this process counts what it admits and rejects
(``sluicegate_jobs_enqueued_total``, ``sluicegate_jobs_rejected_total``) and
reads queue gauges from the store at each scrape, so they are the same
whichever API server is scraped. Breaker gauges and transition counters are
read from the store at each scrape too. The transition counts are part of
each breaker's stored state, so a transition made by any process is counted
once, whichever server is scraped. Workers run in other processes and export
their own counters and histograms (jobs started, succeeded, failed, retried,
dead-lettered; queue wait and run time) on ``sluicegate worker
--metrics-port PORT``; see :mod:`sluicegate.worker.metrics`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sluicegate.breaker import BreakerSnapshot
from sluicegate.breaker_state import Phase
from sluicegate.broker import QueueBounds, QueueStats

logger = logging.getLogger(__name__)


#: The value of ``sluicegate_breaker_state`` for each state.
BREAKER_STATE_VALUES = {Phase.CLOSED: 0, Phase.HALF_OPEN: 1, Phase.OPEN: 2}


class ApiMetrics:
    """The counters of one API server and collectors of queue and breaker metrics.

    Parameters:
      stats: returns every queue's stats; called at each scrape.
      bounds: returns the bounds this server enforces for a queue.
      breakers: returns a snapshot of every known breaker; called at each scrape.
    """

    def __init__(
        self,
        stats: Callable[[], list[QueueStats]],
        bounds: Callable[[str], QueueBounds],
        breakers: Callable[[], list[BreakerSnapshot]] | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.enqueued = Counter(
            "sluicegate_jobs_enqueued_total",
            "Jobs created through this API server.",
            ["queue", "task"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "sluicegate_jobs_rejected_total",
            "Enqueue requests rejected by back pressure (503), by bound.",
            ["queue", "task", "reason"],
            registry=self.registry,
        )
        self.registry.register(_QueueCollector(stats, bounds))
        if breakers is not None:
            self.registry.register(_BreakerCollector(breakers))

    def render(self) -> bytes:
        """Return every metric in the Prometheus text format."""
        return generate_latest(self.registry)


class _QueueCollector(Collector):
    def __init__(
        self,
        stats: Callable[[], list[QueueStats]],
        bounds: Callable[[str], QueueBounds],
    ) -> None:
        self._stats = stats
        self._bounds = bounds

    def describe(self) -> list[GaugeMetricFamily]:
        return list(self._families().values())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            snapshot = self._stats()
        except Exception:
            logger.exception("queue stats unavailable for metrics")
            snapshot = []
        families = self._families()
        for stats in snapshot:
            values = {
                "depth": stats.ready,
                "delayed": stats.delayed,
                "running": stats.running,
                "dead": stats.dead,
                "oldest_ready_age_seconds": stats.oldest_ready_age or 0.0,
                "max_length": self._bounds(stats.name).max_length,
                "enqueue_rate": stats.enqueue_rate,
                "completion_rate": stats.completion_rate,
            }
            for key, value in values.items():
                families[key].add_metric([stats.name], float(value))
        yield from families.values()

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily]:
        helps = {
            "depth": "Ready messages: the queue depth.",
            "delayed": "Messages waiting for their delay or eta.",
            "running": "Messages reserved by workers.",
            "dead": "Dead letters.",
            "oldest_ready_age_seconds": "Age of the oldest ready message (0 when none).",
            "max_length": "The queue's bound on live messages.",
            "enqueue_rate": "Messages enqueued per second over the last 30 to 60 s.",
            "completion_rate": "Messages completed per second over the last 30 to 60 s.",
        }
        return {
            key: GaugeMetricFamily(f"sluicegate_queue_{key}", text, labels=["queue"])
            for key, text in helps.items()
        }


class _BreakerCollector(Collector):
    def __init__(self, snapshots: Callable[[], list[BreakerSnapshot]]) -> None:
        self._snapshots = snapshots

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        try:
            snapshots = self._snapshots()
        except Exception:
            logger.exception("breaker states unavailable for metrics")
            snapshots = []
        state, rate, transitions = self._families()
        for snapshot in snapshots:
            state.add_metric([snapshot.name], BREAKER_STATE_VALUES[snapshot.state])
            rate.add_metric([snapshot.name], snapshot.failure_rate)
            counts = {
                Phase.OPEN: snapshot.opened_count,
                Phase.HALF_OPEN: snapshot.half_opened_count,
                Phase.CLOSED: snapshot.closed_count,
            }
            for phase, count in counts.items():
                transitions.add_metric([snapshot.name, phase.value], count)
        yield from (state, rate, transitions)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, CounterMetricFamily]:
        state = GaugeMetricFamily(
            "sluicegate_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            labels=["breaker"],
        )
        rate = GaugeMetricFamily(
            "sluicegate_breaker_failure_rate",
            "Failures / calls in the breaker's window (0 without calls).",
            labels=["breaker"],
        )
        transitions = CounterMetricFamily(
            "sluicegate_breaker_transitions",
            "Changes of a breaker into the state `to`, counted by every process.",
            labels=["breaker", "to"],
        )
        return state, rate, transitions
