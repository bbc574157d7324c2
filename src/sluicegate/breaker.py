"""Circuit breakers whose state lives in the store, shared by every process on every host.

A :class:`Breaker` guards one downstream dependency::

    payments = app.breaker("payments", failure_types=(ConnectionError,))

    with payments:              # raises BreakerOpen while the breaker is open
        charge(card)

    @payments                   # the same for a sync or an async function
    async def refund(card): ...

The state is JSON under the store key ``breaker:<name>``. Every change is a
read-modify-write applied with ``compare_and_set`` and retried on conflict,
so concurrent processes do not overwrite each other's counts or admit more
half-open probes than allowed. A call whose update loses
``MAX_UPDATE_ATTEMPTS`` swaps in a row raises ``StoreUnavailable``. The
rules live in :mod:`sluicegate.breaker_state`.

Each admission reads the store once, and each counted outcome writes it
once. Every process applies its own copy of the options to the shared state,
so declare a breaker with the same options everywhere.

NOTE: times come from each process's clock, so hosts whose clocks differ by
more than a bucket (``window / 10`` seconds) count into different buckets.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from sluicegate._offload import to_thread
from sluicegate.breaker_state import (
    MAX_DURATION,
    Admission,
    BreakerPolicy,
    BreakerState,
    Mode,
    Outcome,
    Phase,
    Ticket,
    admit,
    close_breaker,
    failure_rate,
    make_policy,
    open_breaker,
    record,
    window_counts,
)
from sluicegate.errors import BreakerOpen, ConfigurationError, StoreUnavailable
from sluicegate.store import Store

if TYPE_CHECKING:
    from sluicegate.app import App

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

#: Prefix of the store keys of breaker states.
KEY_PREFIX = "breaker:"

#: Attempts of one read-modify-write before giving up with ``StoreUnavailable``.
MAX_UPDATE_ATTEMPTS = 50

#: Upper bound, in seconds, of the random pause after a lost compare-and-set.
MAX_CONFLICT_PAUSE = 0.005


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """The state of a breaker at one moment. Times are Unix seconds, durations seconds.

    ``next_probe_at`` is when the breaker may admit a probe: ``None`` while
    closed, and the current time while half-open probes are free.
    ``opened_count``, ``half_opened_count`` and ``closed_count`` are the
    stored transition counts (see :class:`sluicegate.breaker_state.BreakerState`).
    """

    name: str
    state: Phase
    failure_rate: float
    calls: int
    failures: int
    consecutive_failures: int
    window: float
    opened_at: float | None
    next_probe_at: float | None
    reset_timeout: float
    probes_admitted: int
    probe_successes: int
    opened_count: int = 0
    half_opened_count: int = 0
    closed_count: int = 0


class Breaker:
    """A circuit breaker named ``name``, its state kept in ``store``.

    Parameters:
      name: the breaker's name, unique per dependency.
      store: the store, or a function returning it (``App`` passes its backend
        property, which reopens the connection after a fork).
      failure_types: exceptions that count as failures. Other exceptions
        pass through and count as neither success nor failure.
      clock: returns the current Unix time in seconds.
      The remaining options are those of :func:`sluicegate.breaker_state.make_policy`.

    Raises ``ConfigurationError`` for an invalid option.
    """

    def __init__(
        self,
        name: str,
        store: Store | Callable[[], Store],
        *,
        failure_threshold: float = 0.5,
        minimum_calls: int = 20,
        window: float = 60.0,
        reset_timeout: float = 30.0,
        half_open_calls: int = 3,
        failure_types: Sequence[type[BaseException]] = (Exception,),
        mode: Mode = "rate",
        max_reset_timeout: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(name, str) or not name or len(name) > 200:
            raise ConfigurationError(f"breaker name must be a non-empty string, got {name!r}")
        self.name = name
        self.policy: BreakerPolicy = make_policy(
            failure_threshold,
            minimum_calls,
            window,
            reset_timeout,
            half_open_calls,
            mode,
            max_reset_timeout,
        )
        self.failure_types = _check_failure_types(failure_types)
        self.key = KEY_PREFIX + name
        self._store = store
        self._clock = clock
        self._tickets: contextvars.ContextVar[tuple[Ticket, ...]] = contextvars.ContextVar(
            f"sluicegate_breaker_{name}", default=()
        )

    def __repr__(self) -> str:
        return f"Breaker({self.name!r})"

    # -- guarding calls

    def __enter__(self) -> Breaker:
        self._tickets.set((*self._tickets.get(), self.acquire()))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        *rest, ticket = self._tickets.get()
        self._tickets.set(tuple(rest))
        self.release(ticket, exc)

    async def __aenter__(self) -> Breaker:
        ticket = await to_thread(self.acquire)
        self._tickets.set((*self._tickets.get(), ticket))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        *rest, ticket = self._tickets.get()
        self._tickets.set(tuple(rest))
        await to_thread(self.release, ticket, exc)

    @overload
    def __call__(
        self, function: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...

    @overload
    def __call__(self, function: Callable[P, R]) -> Callable[P, R]: ...

    def __call__(self, function: Callable[P, Any]) -> Callable[P, Any]:
        """Guard every call of ``function``, a sync or an async function."""
        if inspect.iscoroutinefunction(function):
            coroutine_function: Callable[P, Awaitable[Any]] = function

            @functools.wraps(function)
            async def guarded_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                async with self:
                    return await coroutine_function(*args, **kwargs)

            return guarded_async

        @functools.wraps(function)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> Any:
            with self:
                return function(*args, **kwargs)

        return guarded

    def acquire(self) -> Ticket:
        """Admit one call, or raise ``BreakerOpen``; pass the ticket to :meth:`release`."""
        now = self._clock()
        admission = self._update(lambda state: _admission_step(self.policy, state, now))
        if admission.ticket is None:
            assert admission.retry_at is not None
            raise BreakerOpen(self.name, admission.retry_at, max(0.0, admission.retry_at - now))
        return admission.ticket

    def release(self, ticket: Ticket, error: BaseException | None) -> None:
        """Count how an admitted call ended: ``error`` is its exception, or None on success."""
        self.record_outcome(ticket, False if error is None else self.failure_of(type(error)))

    def failure_of(self, kind: type[BaseException]) -> bool | None:
        """Return True if an exception of ``kind`` counts as a failure, else None (as nothing)."""
        return True if issubclass(kind, self.failure_types) else None

    def record_outcome(self, ticket: Ticket, failure: bool | None) -> None:
        """Count an admitted call: a failure (True), a success (False) or neither (None)."""
        if failure is None:
            outcome = Outcome.IGNORED
        else:
            outcome = Outcome.FAILURE if failure else Outcome.SUCCESS
        now = self._clock()
        self._update(lambda state: (record(self.policy, state, ticket, outcome, now), None))

    def cancel(self, ticket: Ticket) -> None:
        """Give back an admitted call that will not run; a half-open probe slot is freed."""
        self.record_outcome(ticket, None)

    # -- inspecting and operating

    def state(self) -> BreakerSnapshot:
        """Return the breaker's current state as read from the store."""
        now = self._clock()
        state = self._read()[1]
        calls, failures = window_counts(self.policy, state, now)
        if state.phase is Phase.OPEN:
            next_probe_at = state.retry_at
        elif state.phase is Phase.HALF_OPEN:
            next_probe_at = admit(self.policy, state, now).retry_at or now
        else:
            next_probe_at = None
        return BreakerSnapshot(
            name=self.name,
            state=state.phase,
            failure_rate=failures / calls if calls else 0.0,
            calls=calls,
            failures=failures,
            consecutive_failures=state.consecutive_failures,
            window=self.policy.window,
            opened_at=state.opened_at,
            next_probe_at=next_probe_at,
            reset_timeout=state.reset_timeout or self.policy.reset_timeout,
            probes_admitted=state.probes_admitted,
            probe_successes=state.probe_successes,
            opened_count=state.opened_count,
            half_opened_count=state.half_opened_count,
            closed_count=state.closed_count,
        )

    def reset(self) -> None:
        """Close the breaker and forget its call counts, in every process."""
        self._update(lambda state: (close_breaker(state, state.generation + 1), None), True)

    def force_open(self, duration: float | None = None) -> None:
        """Open the breaker now for ``duration`` seconds (default: the reset timeout).

        After that it admits half-open probes as usual; :meth:`reset` closes it earlier.
        """
        if duration is None:
            duration = self.policy.reset_timeout
        elif (
            isinstance(duration, bool)
            or not isinstance(duration, int | float)
            or not 0 < duration <= MAX_DURATION
        ):
            raise ConfigurationError(
                f"duration must be a positive number of seconds up to {MAX_DURATION:g}, "
                f"got {duration!r}"
            )
        now = self._clock()
        self._update(lambda state: (open_breaker(state, now, float(duration)), None), True)

    # -- the store

    def _read(self, replace_invalid: bool = False) -> tuple[bytes | None, BreakerState]:
        """Return the stored bytes and the state.

        With ``replace_invalid``, an unreadable state reads as a new closed one,
        so that reset and force-open can overwrite it.
        """
        raw = self._get_store().get_value(self.key)
        if raw is None:
            return None, BreakerState()
        try:
            return raw, BreakerState.decode(raw)
        except (ValueError, KeyError, TypeError) as exc:
            if replace_invalid:
                logger.warning(
                    "breaker state unreadable, replacing it name=%s error=%s", self.name, exc
                )
                return raw, BreakerState()
            raise StoreUnavailable(
                f"breaker {self.name!r}: cannot read the state under {self.key!r} ({exc}); "
                f"run `sluicegate breakers reset` to replace it"
            ) from exc

    def _update(
        self, step: Callable[[BreakerState], tuple[BreakerState, T]], replace_invalid: bool = False
    ) -> T:
        """Apply ``step`` to the stored state atomically, retrying when another process wins."""
        store = self._get_store()
        for _ in range(MAX_UPDATE_ATTEMPTS):
            raw, state = self._read(replace_invalid)
            new_state, result = step(state)
            if new_state == state or store.compare_and_set(self.key, raw, new_state.encode()):
                self._log_transition(state, new_state)
                return result
            # Another process changed the state between the read and the swap.
            time.sleep(random.uniform(0, MAX_CONFLICT_PAUSE))
        raise StoreUnavailable(
            f"breaker {self.name!r}: the state kept changing under {MAX_UPDATE_ATTEMPTS} "
            f"consecutive update attempts; retry the call"
        )

    def _get_store(self) -> Store:
        return self._store() if callable(self._store) else self._store

    def _log_transition(self, old: BreakerState, new: BreakerState) -> None:
        if old.phase is new.phase and old.generation == new.generation:
            return
        now = self._clock()
        counted = new if new.phase is Phase.OPEN else old  # Closing clears the counts.
        calls = window_counts(self.policy, counted, now)[0]
        rate = failure_rate(self.policy, counted, now)
        fields = (self.name, rate, calls, self.policy.window)
        if new.phase is Phase.OPEN:
            logger.warning(
                "breaker opened name=%s failure_rate=%.3f calls=%d window_s=%g "
                "reset_timeout_s=%g was=%s",
                *fields,
                new.reset_timeout,
                old.phase.value,
            )
        elif new.phase is Phase.HALF_OPEN:
            logger.info(
                "breaker half-open name=%s failure_rate=%.3f calls=%d window_s=%g probes=%d",
                *fields,
                self.policy.half_open_calls,
            )
        else:
            logger.info(
                "breaker closed name=%s failure_rate=%.3f calls=%d window_s=%g was=%s",
                *fields,
                old.phase.value,
            )


def known_breakers(app: App) -> list[Breaker]:
    """Return the breakers that ``app`` declares or its tasks name, and those with a
    state in its store, by name."""
    stored = [key.removeprefix(KEY_PREFIX) for key in app.backend.keys(KEY_PREFIX)]
    names = sorted(set(app.breakers) | set(stored) | _task_breakers(app))
    return [breaker_of(app, name) for name in names]


def breaker_of(app: App, name: str) -> Breaker:
    """Return breaker ``name`` as declared on ``app``, else with the default options.

    A breaker that other processes declare with other options is read here
    with the defaults, so its failure rate counts over the default window.
    """
    return app.breakers.get(name) or Breaker(name, lambda: app.backend)


def is_known_breaker(app: App, name: str) -> bool:
    """Return whether ``app`` declares breaker ``name`` or its store has a state for it."""
    return (
        name in app.breakers
        or name in _task_breakers(app)
        or app.backend.get_value(KEY_PREFIX + name) is not None
    )


def _task_breakers(app: App) -> set[str]:
    """Return the breaker names that the app's tasks pass to ``breaker=``."""
    return {task.options.breaker for task in app.tasks.values() if task.options.breaker}


def _admission_step(
    policy: BreakerPolicy, state: BreakerState, now: float
) -> tuple[BreakerState, Admission]:
    admission = admit(policy, state, now)
    return admission.state, admission


def _check_failure_types(failure_types: object) -> tuple[type[BaseException], ...]:
    kinds = (failure_types,) if isinstance(failure_types, type) else failure_types
    if (
        isinstance(kinds, tuple | list)
        and kinds
        and all(isinstance(kind, type) and issubclass(kind, BaseException) for kind in kinds)
    ):
        return tuple(kinds)
    raise ConfigurationError(
        f"failure_types must be exception classes, e.g. (ConnectionError,), got {failure_types!r}"
    )
