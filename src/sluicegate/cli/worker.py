"""``sluicegate worker``: run jobs."""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

import click

from sluicegate.cli._common import import_app, user_errors
from sluicegate.scheduler import Scheduler
from sluicegate.worker import event_loop_tasks, worker_class
from sluicegate.worker.metrics import WorkerMetrics


@click.command()
@click.argument("app_spec", metavar="APP_MODULE:APP")
@click.option(
    "--queues",
    "-q",
    default=None,
    help="Comma-separated queues to consume; default: every queue of the app's tasks.",
)
@click.option(
    "--concurrency",
    "-c",
    default=8,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Jobs run at once.",
)
@click.option(
    "--processes",
    "-p",
    default=None,
    type=click.IntRange(1, 1024),
    help="Size of the process pool for pool='process' tasks; default: number of CPUs.",
)
@click.option(
    "--grace",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds running jobs get to finish after SIGTERM before they are given back.",
)
@click.option(
    "--with-scheduler",
    is_flag=True,
    help="Also run the scheduler in this process, so it enqueues the app's periodic tasks.",
)
@click.option(
    "--loop",
    "loop_kind",
    type=click.Choice(["auto", "asyncio", "threads"]),
    default="auto",
    show_default=True,
    help="What drives the worker. asyncio serves every pool; threads serves sync "
    "thread-pool tasks only, without asyncio, in a smaller process; auto picks threads "
    "when no task of the app is async or pool='process'.",
)
@click.option(
    "--metrics-port",
    default=None,
    type=click.IntRange(1, 65535),
    help="Serve Prometheus metrics on 127.0.0.1 at this TCP port (needs prometheus-client).",
)
@user_errors
def worker(
    app_spec: str,
    queues: str | None,
    concurrency: int,
    processes: int | None,
    grace: float,
    with_scheduler: bool,
    loop_kind: str,
    metrics_port: int | None,
) -> None:
    """Run a worker for the app APP_MODULE:APP until SIGTERM or SIGINT."""
    app = import_app(app_spec)
    names = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    driver = _driver(app, loop_kind, names)
    metrics = None if metrics_port is None else WorkerMetrics(metrics_port)
    scheduler = Scheduler(app) if with_scheduler else None
    if scheduler is not None:
        scheduler.start()
    code = driver(
        app,
        queues=names,
        concurrency=concurrency,
        processes=processes,
        grace=grace,
        app_spec=app_spec,
        metrics=metrics,
    ).run()
    if scheduler is not None:
        scheduler.stop()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    if threading.active_count() > 1:
        # A sync task past its timeout may still run in a thread that cannot be stopped;
        # its result is discarded, so exit without waiting for it.
        os._exit(code)
    sys.exit(code)


def _driver(app: Any, loop_kind: str, queues: list[str] | None) -> Any:
    """Return the worker class for ``--loop``; reject threads for tasks that need a loop."""
    if loop_kind == "asyncio":
        from sluicegate.worker.worker import Worker

        return Worker
    tasks = event_loop_tasks(app, queues) if loop_kind == "threads" else []
    if tasks:
        raise click.UsageError(
            f"--loop threads runs sync thread-pool tasks only, and these tasks are async or "
            f"pool='process': {', '.join(tasks)}; use --loop asyncio or auto"
        )
    return worker_class(app, queues)
