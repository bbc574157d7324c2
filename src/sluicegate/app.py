"""The App: a backend URL, queue declarations and the task registry."""

from __future__ import annotations

import datetime as dt
import importlib
import inspect
import os
import sys
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, ParamSpec, Protocol, TypeVar, overload
from zoneinfo import ZoneInfo

from sluicegate import _forks
from sluicegate._offload import to_thread
from sluicegate.backends import open_backend, redact
from sluicegate.backends.base import Backend, TransactionalEnqueue
from sluicegate.breaker import Breaker
from sluicegate.breaker_state import Mode
from sluicegate.broker import DEFAULT_MAX_LENGTH, QueueBounds
from sluicegate.errors import ConfigurationError, JobNotFound, UnknownTask
from sluicegate.job import Job
from sluicegate.message import DEFAULT_MAX_MESSAGE_SIZE
from sluicegate.queue import Queue
from sluicegate.ratelimit import parse_rate
from sluicegate.retry import Backoff
from sluicegate.retry_budget import RetryBudget
from sluicegate.schedule import (
    DEFAULT_MAX_CATCH_UP,
    CatchUp,
    PeriodicDecorator,
    Schedule,
    build_rule,
    declare,
)
from sluicegate.store import NewJob
from sluicegate.task import Pool, Task, TaskOptions, check_priority
from sluicegate.webhooks import WEBHOOK_TASK, webhook_task

P = ParamSpec("P")
R = TypeVar("R")


class TaskDecorator(Protocol):
    """The decorator returned by ``@app.task(...)``, which turns a function into a :class:`Task`."""

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]]) -> Task[P, R]: ...

    @overload
    def __call__(self, fn: Callable[P, R]) -> Task[P, R]: ...


#: Default lease, in seconds, on a reserved message.
DEFAULT_LEASE = 30.0

#: Default retention, in seconds, of a finished job's record and result (7 days).
DEFAULT_RETENTION = 7 * 24 * 3600.0

#: Database used by ``App()`` with no URL.
DEFAULT_URL = "sqlite:///sluicegate.db"


class App:
    """A sluicegate application: where jobs live, and which tasks exist.

    Parameters:
      url: the backend, e.g. ``sqlite:///jobs.db`` (relative) or
        ``sqlite:////var/lib/app/jobs.db`` (absolute). Defaults to
        ``./sluicegate.db``.
      lease: seconds a reserved message stays invisible to other workers
        unless its worker extends it; tasks may override it.
      retention: seconds a finished job's record and result are kept.
      max_message_size: limit in bytes on an encoded message and result.
      backoff: the default retry backoff of the app's tasks.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        lease: float = DEFAULT_LEASE,
        retention: float = DEFAULT_RETENTION,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        backoff: Backoff | None = None,
    ) -> None:
        _check_positive("lease", lease)
        _check_positive("retention", retention)
        _check_positive("max_message_size", max_message_size)
        self.url = url or DEFAULT_URL
        self.lease = float(lease)
        self.retention = float(retention)
        self.max_message_size = int(max_message_size)
        self.backoff = backoff or Backoff()
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.schedules: dict[str, Schedule] = {}
        self._bounds: dict[str, QueueBounds] = {}
        self._retry_budgets: dict[str, RetryBudget] = {}
        self._retry_budget_options: dict[str, tuple[float | None, float, int]] = {}
        self.breakers: dict[str, Breaker] = {}
        self._breaker_options: dict[str, dict[str, Any]] = {}
        self._backend: Backend | None = None
        self._backend_generation = -1  # The fork generation it was opened in.
        self._backend_lock = threading.Lock()
        open_backend(self.url, durable=True).close()  # Validates the URL and creates the schema.

    def __repr__(self) -> str:
        return f"App({redact(self.url)!r})"

    @property
    def backend(self) -> Backend:
        """The backend this process uses to enqueue and read jobs, opened on first use."""
        if self._backend is None or self._backend_generation != _forks.generation:
            with self._backend_lock:
                if self._backend is None or self._backend_generation != _forks.generation:
                    self._backend = open_backend(self.url, durable=True)
                    self._backend_generation = _forks.generation
        assert self._backend is not None
        return self._backend

    def open_worker_backend(self) -> Backend:
        """Open a separate backend for a worker (see the backend's durability notes)."""
        return open_backend(self.url, durable=False)

    def close(self) -> None:
        """Close this process's connections to the backend."""
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    # -- queues

    def queue(
        self, name: str, max_length: int | None = None, max_wait: float | None = None
    ) -> Queue:
        """Return the queue ``name``, declaring its bounds when they are given.

        ``max_length`` bounds the messages in the queue (default 100,000);
        ``max_wait`` bounds the age in seconds of its oldest ready message.
        """
        _check_queue_name(name)
        if max_length is not None or max_wait is not None:
            current = self._bounds.get(name, QueueBounds())
            if max_length is not None and (
                isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1
            ):
                raise ConfigurationError(
                    f"max_length must be a positive integer, got {max_length!r}"
                )
            if max_wait is not None:
                _check_positive("max_wait", max_wait)
            self._bounds[name] = QueueBounds(
                max_length=current.max_length if max_length is None else int(max_length),
                max_wait=current.max_wait if max_wait is None else float(max_wait),
            )
        return Queue(self, name)

    def bounds(self, queue: str) -> QueueBounds:
        """Return the declared bounds of ``queue``, or the defaults."""
        return self._bounds.get(queue) or _DEFAULT_BOUNDS

    def retry_budget(
        self,
        queue: str,
        ratio: float | None = 0.2,
        window: float = 10.0,
        min_retries: int = 100,
    ) -> RetryBudget | None:
        """Return the retry budget of ``queue``, declaring it on first use.

        Retries of the queue's jobs run at their backoff while they number at
        most ``ratio`` times the first attempts over the last ``window``
        seconds, or ``min_retries`` per window, whichever is more; past that
        they wait longer (see :mod:`sluicegate.retry_budget`). The defaults
        allow 20% retries and at least 10 a second. ``ratio=None`` turns the
        queue's budget off and returns None. Declare a budget before workers
        start, with the same options in every process; a later call with the
        default options returns the declared one, and one with other options
        raises ``ConfigurationError``.
        """
        _check_queue_name(queue)
        options = (ratio, window, min_retries)
        declared = self._retry_budget_options.get(queue)
        if declared is not None and options not in (declared, _DEFAULT_BUDGET_OPTIONS):
            raise ConfigurationError(
                f"the retry budget of queue {queue!r} is declared already with other options"
            )
        if declared is None:
            self._retry_budget_options[queue] = options
            if ratio is not None:
                self._retry_budgets[queue] = RetryBudget(
                    queue, lambda: self.backend, ratio, window, min_retries
                )
        return self._retry_budgets.get(queue)

    # -- breakers

    def breaker(
        self,
        name: str,
        failure_threshold: float = 0.5,
        minimum_calls: int = 20,
        window: float = 60,
        reset_timeout: float = 30,
        half_open_calls: int = 3,
        failure_types: Sequence[type[BaseException]] = (Exception,),
        mode: Mode = "rate",
        max_reset_timeout: float | None = None,
    ) -> Breaker:
        """Return the circuit breaker ``name``, declaring it on first use.

        ``window``, ``reset_timeout`` and ``max_reset_timeout`` (default 10 x
        ``reset_timeout``) are in seconds. A later call with the default options
        returns the declared breaker; one with other options raises
        ``ConfigurationError``. See :class:`sluicegate.breaker.Breaker`.
        """
        options: dict[str, Any] = {
            "failure_threshold": failure_threshold,
            "minimum_calls": minimum_calls,
            "window": window,
            "reset_timeout": reset_timeout,
            "half_open_calls": half_open_calls,
            "failure_types": tuple(failure_types)
            if isinstance(failure_types, list | tuple)
            else failure_types,
            "mode": mode,
            "max_reset_timeout": max_reset_timeout,
        }
        declared = self.breakers.get(name)
        if declared is not None:
            if options in (self._breaker_options[name], _DEFAULT_BREAKER_OPTIONS):
                return declared
            raise ConfigurationError(
                f"breaker {name!r} is declared already with other options; "
                f"declare it once and call app.breaker({name!r}) elsewhere"
            )
        breaker = Breaker(name, lambda: self.backend, **options)
        self.breakers[name] = breaker
        self._breaker_options[name] = options
        return breaker

    # -- tasks

    @overload
    def task(self, fn: Callable[P, Coroutine[Any, Any, R]]) -> Task[P, R]: ...

    @overload
    def task(self, fn: Callable[P, R]) -> Task[P, R]: ...

    @overload
    def task(
        self,
        fn: None = None,
        *,
        name: str | None = None,
        queue: str = "default",
        retries: int = 3,
        backoff: Backoff | None = None,
        timeout: float | None = None,
        pool: Pool | None = None,
        priority: int = 0,
        retry_on: Sequence[type[BaseException]] = (Exception,),
        lease: float | None = None,
        retention: float | None = None,
        breaker: str | None = None,
        rate_limit: str | None = None,
        deadline: float | dt.timedelta | None = None,
    ) -> TaskDecorator: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        queue: str = "default",
        retries: int = 3,
        backoff: Backoff | None = None,
        timeout: float | None = None,
        pool: Pool | None = None,
        priority: int = 0,
        retry_on: Sequence[type[BaseException]] = (Exception,),
        lease: float | None = None,
        retention: float | None = None,
        breaker: str | None = None,
        rate_limit: str | None = None,
        deadline: float | dt.timedelta | None = None,
    ) -> Any:
        """Register a function as a task; use as ``@app.task`` or ``@app.task(...)``.

        ``pool`` is ``"thread"`` for sync functions by default and
        ``"async"`` for ``async def`` ones; ``"process"`` runs a sync
        function in a worker's process pool, for CPU-bound work.
        ``timeout`` is in seconds; ``retries`` counts retries after the
        first attempt.

        ``breaker`` names a breaker of this app (see :meth:`breaker`; an
        undeclared name gets the default options): while it is open, a job
        goes back to its queue until the breaker may admit a probe, its
        attempt count unchanged, and failures of the breaker's
        ``failure_types`` count toward it. ``rate_limit`` (``"100/s"``,
        ``"1000/m"``, see :func:`sluicegate.ratelimit.parse_rate`) caps the
        attempts started per period by every worker together; a job over it
        waits, spending no attempt. ``deadline`` (seconds or a timedelta)
        fails a job that has not started that long after its enqueue.
        """

        def register(function: Callable[..., Any]) -> Task[Any, Any]:
            options = TaskOptions(
                name=name or task_name(function),
                queue=_check_queue_name(queue),
                retries=_check_retries(retries),
                backoff=backoff or self.backoff,
                timeout=None if timeout is None else _check_positive("timeout", timeout),
                pool=_pick_pool(function, pool),
                priority=check_priority(priority),
                retry_on=_check_retry_on(retry_on),
                lease=self.lease if lease is None else _check_positive("lease", lease),
                retention=(
                    self.retention if retention is None else _check_positive("retention", retention)
                ),
                breaker=_check_breaker_name(breaker),
                rate_limit=None if rate_limit is None else parse_rate(rate_limit),
                deadline=_check_deadline(deadline),
            )
            if options.name in self.tasks:
                raise ConfigurationError(f"a task named {options.name!r} is registered already")
            task: Task[Any, Any] = Task(self, function, options)
            self.tasks[options.name] = task
            return task

        return register if fn is None else register(fn)

    def periodic(
        self,
        *,
        cron: str | None = None,
        every: dt.timedelta | None = None,
        timezone: str | ZoneInfo = "UTC",
        start: dt.datetime | None = None,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        name: str | None = None,
        queue: str | None = None,
        catch_up: CatchUp = "skip",
        max_catch_up: int = DEFAULT_MAX_CATCH_UP,
        **task_options: Any,
    ) -> PeriodicDecorator:
        """Run a task on a schedule: ``@app.periodic(cron="0 3 * * *", timezone="Europe/Berlin")``.

        Give exactly one of ``cron`` (5 fields, read on the wall clock of
        ``timezone``) or ``every`` (a timedelta of at least 1 second, anchored
        at ``start``, default the Unix epoch). A function becomes a task
        named ``name`` on ``queue`` (default ``"default"``), with ``task_options`` passed to
        :meth:`task`; a task is scheduled as it is. Each fire enqueues
        ``task(*args, **kwargs)``. ``catch_up`` (``"skip"``, ``"latest"`` or
        ``"all"``, at most ``max_catch_up`` fires) decides what happens to
        fires missed while no scheduler ran. See :mod:`sluicegate.schedule`
        for the DST rules. Raises ``ConfigurationError`` for invalid options.
        """
        rule = build_rule(cron, every, timezone, start)

        def register(target: Callable[..., Any]) -> Task[Any, Any]:
            return declare(
                self,
                target,
                rule,
                name=name,
                queue=queue,
                args=args,
                kwargs=kwargs,
                catch_up=catch_up,
                max_catch_up=max_catch_up,
                task_options=task_options,
            )

        return register  # type: ignore[return-value]

    def get_task(self, name: str) -> Task[Any, Any]:
        """Return the task registered as ``name``; raise ``UnknownTask`` otherwise."""
        try:
            return self.tasks[name]
        except KeyError:
            if name == WEBHOOK_TASK:  # Built in, registered when a worker first needs it.
                return webhook_task(self)
            raise UnknownTask(name) from None

    # -- jobs

    def enqueue(self, task_name: str, *args: Any, **kwargs: Any) -> Job[Any]:
        """Enqueue a call of a task by its name; takes the options of ``Task.enqueue``."""
        return self.get_task(task_name).enqueue(*args, **kwargs)

    async def aenqueue(self, task_name: str, *args: Any, **kwargs: Any) -> Job[Any]:
        """Enqueue by task name without blocking the event loop."""
        return await self.get_task(task_name).aenqueue(*args, **kwargs)

    def job(self, job_id: str) -> Job[Any]:
        """Return a handle on job ``job_id``; raise ``JobNotFound`` if it does not exist."""
        record = self.backend.get_job(job_id)
        if record is None:
            raise JobNotFound(job_id)
        return Job(self, job_id, record)

    async def ajob(self, job_id: str) -> Job[Any]:
        """Look a job up without blocking the event loop; see :meth:`job`."""
        return await to_thread(self.job, job_id)

    def _submit(
        self, task: Task[Any, Any], jobs: list[NewJob], connection: Any = None
    ) -> list[Job[Any]]:
        bounds = self.bounds(task.options.queue)
        if len(jobs) > bounds.max_length:
            raise ConfigurationError(
                f"a batch of {len(jobs)} jobs can never fit queue {task.options.queue!r}, "
                f"whose max_length is {bounds.max_length}; enqueue it in smaller batches"
            )
        if connection is None:
            results = self.backend.enqueue_jobs(jobs, bounds)
        elif isinstance(self.backend, TransactionalEnqueue):
            results = self.backend.enqueue_jobs_in(connection, jobs, bounds)
        else:
            raise ConfigurationError(
                f"enqueue(connection=...) needs a postgresql:// backend; the backend of "
                f"{redact(self.url)!r} cannot join the caller's transaction"
            )
        return [Job(self, result.job_id) for result in results]


_DEFAULT_BOUNDS = QueueBounds(max_length=DEFAULT_MAX_LENGTH)

_DEFAULT_BREAKER_OPTIONS: dict[str, Any] = {
    "failure_threshold": 0.5,
    "minimum_calls": 20,
    "window": 60,
    "reset_timeout": 30,
    "half_open_calls": 3,
    "failure_types": (Exception,),
    "mode": "rate",
    "max_reset_timeout": None,
}

#: The options ``app.retry_budget(queue)`` reads as "the declared budget, or the default".
_DEFAULT_BUDGET_OPTIONS: tuple[float | None, float, int] = (0.2, 10.0, 100)


def task_name(function: Callable[..., Any]) -> str:
    """Return the default task name: ``module.qualname``.

    A function defined in a script run as ``__main__`` is named after the
    script's module name, so that a worker importing that module finds it.
    """
    module = function.__module__
    if module == "__main__":
        main = sys.modules.get("__main__")
        spec = getattr(main, "__spec__", None)
        if spec is not None and spec.name:
            module = spec.name
        elif main is not None and getattr(main, "__file__", None):
            module = os.path.splitext(os.path.basename(str(main.__file__)))[0]
    return f"{module}.{function.__qualname__}"


def _pick_pool(function: Callable[..., Any], pool: Pool | None) -> Pool:
    is_async = inspect.iscoroutinefunction(function)
    if pool is None:
        return "async" if is_async else "thread"
    if pool not in ("thread", "process", "async"):
        raise ConfigurationError(f"pool must be 'thread', 'process' or 'async', got {pool!r}")
    if is_async != (pool == "async"):
        kind = "an async" if is_async else "a sync"
        raise ConfigurationError(
            f"{function.__qualname__} is {kind} function; pool={pool!r} cannot run it"
        )
    return pool


def _check_positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigurationError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _check_retry_on(retry_on: object) -> tuple[type[BaseException], ...]:
    kinds = (retry_on,) if isinstance(retry_on, type) else retry_on
    if isinstance(kinds, tuple | list) and all(
        isinstance(kind, type) and issubclass(kind, BaseException) for kind in kinds
    ):
        return tuple(kinds)
    raise ConfigurationError(
        f"retry_on must be exception classes, e.g. (ConnectionError,), got {retry_on!r}"
    )


def _check_breaker_name(name: str | None) -> str | None:
    if name is not None and (not isinstance(name, str) or not name or len(name) > 200):
        raise ConfigurationError(f"breaker must be a breaker's name, got {name!r}")
    return name


def _check_deadline(deadline: float | dt.timedelta | None) -> float | None:
    if deadline is None:
        return None
    seconds = deadline.total_seconds() if isinstance(deadline, dt.timedelta) else deadline
    return _check_positive("deadline", seconds)


def _check_retries(retries: int) -> int:
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigurationError(f"retries must be a non-negative integer, got {retries!r}")
    return retries


def _check_queue_name(name: str) -> str:
    if not isinstance(name, str) or not name or len(name) > 200:
        raise ConfigurationError(f"queue name must be a non-empty string, got {name!r}")
    return name


def load_app(app_spec: str) -> Any:
    """Import ``module:attribute`` and return the attribute (an App)."""
    module_name, _, attribute = app_spec.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(
            f"invalid app {app_spec!r}; expected MODULE:ATTRIBUTE, e.g. myapp:app"
        )
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ConfigurationError(
            f"module {module_name!r} has no attribute {attribute!r} (from {app_spec!r})"
        ) from None
