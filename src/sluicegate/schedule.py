"""Schedules: periodic rules (cron or interval) and the fire times they produce.

A schedule enqueues one job of its task per fire time. Fire times are aware
UTC datetimes, and they are computed here as pure functions of the rule, so
every scheduler process derives the same fire times and therefore the same
idempotency keys.

Cron rules are evaluated on the wall clock of the schedule's time zone
(``zoneinfo``), which matters on the two days a year when that clock jumps:

- Spring forward: a wall-clock time that does not exist (02:30 in
  Europe/Berlin on the last Sunday of March) is read with the UTC offset in
  force before the jump, as ``datetime.timestamp()`` reads it for ``fold=0``.
  So a daily 02:30 job fires once that day, at 03:30 local time. Slots of a
  ``*/15`` job inside the gap land on the same instants as the slots after
  it, and each instant fires once.
- Fall back: a wall-clock time that occurs twice fires once, at its first
  occurrence. The exception is a rule whose hour field is ``*`` (``0 * * * *``,
  ``*/15 * * * *``): it fires in both occurrences, so it keeps firing every
  hour or every 15 minutes of real time through the repeated hour.

Interval rules ignore the time zone: they fire at ``start + k * every`` for
every integer ``k >= 0``, in real elapsed time. ``start`` defaults to the Unix
epoch, so fire times stay the same when a scheduler restarts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, Protocol, TypeVar, cast, overload
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sluicegate.errors import ConfigurationError
from sluicegate.task import Task


def _croniter() -> Any:
    """Return the croniter module, imported on first use.

    Workers import this module through the app; importing croniter (and
    dateutil with it) only when a cron rule is built keeps their memory down.
    """
    import croniter  # type: ignore[import-untyped]

    return croniter


if TYPE_CHECKING:
    from sluicegate.app import App

P = ParamSpec("P")
R = TypeVar("R")

CatchUp = Literal["skip", "latest", "all"]

#: Default bound on the missed fires that ``catch_up="all"`` enqueues after a gap.
DEFAULT_MAX_CATCH_UP = 100

#: Shortest interval of an ``every=`` schedule.
MIN_INTERVAL = dt.timedelta(seconds=1)

#: Default anchor of interval schedules.
UNIX_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

#: Maximum length of a schedule name, which is part of idempotency keys of at most 255 characters.
MAX_NAME_LENGTH = 200

#: Largest change of a zone's UTC offset that the cron scan allows for (3 hours).
#: NOTE: a zone change larger than this (Samoa skipped a whole day in 2011) may
#: yield a later fire than the exact next one, though never an earlier one.
_OFFSET_MARGIN = dt.timedelta(hours=3)

#: Upper bound on cron slots examined for one fire time; a 5-field rule needs
#: at most about 400 (every minute over the two margins).
_MAX_SCAN_STEPS = 10_000

_ONE_MICROSECOND = dt.timedelta(microseconds=1)

_CRON_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


class Rule(Protocol):
    """When a schedule fires. Every datetime in and out is aware; outputs are UTC."""

    @property
    def definition(self) -> str:
        """A canonical text of the rule; a change of it is a changed definition."""
        ...

    def next_fire(self, after: dt.datetime) -> dt.datetime:
        """Return the first fire time strictly after ``after``."""
        ...

    def latest_fire(self, until: dt.datetime) -> dt.datetime | None:
        """Return the last fire time at or before ``until``, or None if there is none."""
        ...


class CronRule:
    """A 5-field cron expression evaluated on the wall clock of ``timezone``.

    The fields are minute, hour, day of month, month and day of week, as in
    crontab(5). The aliases ``@hourly``, ``@daily``, ``@weekly``, ``@monthly``
    and ``@yearly`` are accepted. Raises ``ConfigurationError`` naming the
    expression if it is invalid or never fires.
    """

    def __init__(self, expression: str, timezone: ZoneInfo) -> None:
        if not isinstance(expression, str):
            raise ConfigurationError(f"cron must be a string, got {type(expression).__name__}")
        text = " ".join(expression.split())
        text = _CRON_ALIASES.get(text.lower(), text)
        if len(text.split(" ")) != 5:
            raise ConfigurationError(
                f"invalid cron expression {expression!r}: expected 5 fields "
                "(minute hour day-of-month month day-of-week), e.g. '0 3 * * *'"
            )
        try:
            parsed = _croniter().croniter(text, dt.datetime(2000, 1, 1))
        except _croniter().CroniterError as exc:
            raise ConfigurationError(f"invalid cron expression {expression!r}: {exc}") from None
        self.expression = text
        self.timezone = timezone
        # An hour field of "*" makes every hour a slot, so the repeated hour fires twice.
        self._every_hour = parsed.expanded[1] == ["*"]
        try:
            self.next_fire(dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
        except _croniter().CroniterError:
            raise ConfigurationError(
                f"cron expression {expression!r} never fires (no matching date)"
            ) from None

    def __repr__(self) -> str:
        return f"CronRule({self.expression!r}, {self.timezone.key!r})"

    @property
    def definition(self) -> str:
        return f"cron {self.expression} {self.timezone.key}"

    def next_fire(self, after: dt.datetime) -> dt.datetime:
        after = _to_utc(after, "after")
        local = after.astimezone(self.timezone).replace(tzinfo=None)
        if self._steady(after):
            slot: dt.datetime = _croniter().croniter(self.expression, local).get_next(dt.datetime)
            fire = slot.replace(tzinfo=self.timezone).astimezone(dt.UTC)
            if self._steady(fire):
                return fire
        slots = _croniter().croniter(self.expression, local - _OFFSET_MARGIN)
        return self._scan(lambda: slots.get_next(dt.datetime), lambda t: t > after, min)

    def latest_fire(self, until: dt.datetime) -> dt.datetime | None:
        until = _to_utc(until, "until")
        local = until.astimezone(self.timezone).replace(tzinfo=None)
        # croniter's get_prev returns times strictly before its start, hence the microsecond.
        if self._steady(until):
            slot: dt.datetime = (
                _croniter()
                .croniter(self.expression, local + _ONE_MICROSECOND)
                .get_prev(dt.datetime)
            )
            fire = slot.replace(tzinfo=self.timezone).astimezone(dt.UTC)
            if self._steady(fire):
                return fire
        slots = _croniter().croniter(self.expression, local + _OFFSET_MARGIN + _ONE_MICROSECOND)
        return self._scan(lambda: slots.get_prev(dt.datetime), lambda t: t <= until, max)

    def _steady(self, moment: dt.datetime) -> bool:
        """Return whether the zone's UTC offset is the same over ``moment`` +/- the margin.

        Away from a DST change, wall-clock order is UTC order, so the slot
        next to ``moment`` is the result and no wider scan is needed.
        """
        before = (moment - _OFFSET_MARGIN).astimezone(self.timezone).utcoffset()
        return before == (moment + _OFFSET_MARGIN).astimezone(self.timezone).utcoffset()

    def _scan(
        self,
        step: Callable[[], dt.datetime],
        accept: Callable[[dt.datetime], bool],
        pick: Callable[[dt.datetime, dt.datetime], dt.datetime],
    ) -> dt.datetime:
        """Walk wall-clock slots from one side and return the best accepted instant.

        Near a DST change, wall-clock order and UTC order can differ by up to
        one offset change, so the walk goes on ``_OFFSET_MARGIN`` past the
        slot of the best instant found so far before it trusts that instant.
        """
        best: dt.datetime | None = None
        best_slot: dt.datetime | None = None
        for _ in range(_MAX_SCAN_STEPS):
            slot = step()
            if best_slot is not None and abs(slot - best_slot) > _OFFSET_MARGIN:
                assert best is not None
                return best
            for instant in self.instants(slot):
                if accept(instant) and (best is None or pick(instant, best) == instant):
                    best, best_slot = instant, slot
        raise RuntimeError(f"cron scan of {self.expression!r} did not settle")

    def instants(self, slot: dt.datetime) -> list[dt.datetime]:
        """Return the UTC instants at which the naive wall-clock ``slot`` fires."""
        first = slot.replace(tzinfo=self.timezone, fold=0)
        second = slot.replace(tzinfo=self.timezone, fold=1)
        earlier = first.astimezone(dt.UTC)
        if first.utcoffset() == second.utcoffset():
            return [earlier]
        round_trip = earlier.astimezone(self.timezone).replace(tzinfo=None)
        if round_trip != slot or not self._every_hour:
            return [earlier]  # A nonexistent time, or the first of a repeated one.
        return [earlier, second.astimezone(dt.UTC)]


class IntervalRule:
    """Fires at ``start + k * every`` for every integer ``k >= 0``, in real time.

    ``every`` is at least one second. ``start`` must be an aware datetime; the
    default, the Unix epoch, keeps fire times fixed across restarts.
    ``timezone`` only sets how fire times are shown.
    """

    def __init__(
        self, every: dt.timedelta, start: dt.datetime = UNIX_EPOCH, timezone: ZoneInfo | None = None
    ) -> None:
        if not isinstance(every, dt.timedelta):
            raise ConfigurationError(f"every must be a timedelta, got {type(every).__name__}")
        if every < MIN_INTERVAL:
            raise ConfigurationError(f"every must be at least 1 second, got {every!r}")
        self.every = every
        self.start = _to_utc(start, "start")
        self.timezone = timezone or ZoneInfo("UTC")

    def __repr__(self) -> str:
        return f"IntervalRule({self.every!r}, start={self.start.isoformat()!r})"

    @property
    def definition(self) -> str:
        return f"every {self.every} from {iso_utc(self.start)}"

    def next_fire(self, after: dt.datetime) -> dt.datetime:
        after = _to_utc(after, "after")
        if after < self.start:
            return self.start
        return self.start + ((after - self.start) // self.every + 1) * self.every

    def latest_fire(self, until: dt.datetime) -> dt.datetime | None:
        until = _to_utc(until, "until")
        if until < self.start:
            return None
        return self.start + ((until - self.start) // self.every) * self.every


@dataclass(frozen=True, eq=False)
class Schedule:
    """A periodic rule bound to a task, with the call it enqueues at each fire.

    ``catch_up`` decides what happens to fires that passed while no
    scheduler ran (see ``sluicegate.scheduler``); ``max_catch_up`` bounds
    the fires that ``catch_up="all"`` enqueues after one gap.
    """

    name: str
    task: Task[Any, Any]
    rule: CronRule | IntervalRule
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    catch_up: CatchUp = "skip"
    max_catch_up: int = DEFAULT_MAX_CATCH_UP

    @property
    def timezone(self) -> ZoneInfo:
        return self.rule.timezone

    @property
    def fingerprint(self) -> str:
        """A digest of the rule's definition (cron string or interval, and time zone)."""
        import hashlib  # Here: hashlib loads OpenSSL, which most workers never need.

        return hashlib.sha256(self.rule.definition.encode()).hexdigest()[:16]

    def idempotency_key(self, fire: dt.datetime) -> str:
        """Return the key that makes each fire one job, whichever scheduler enqueues it."""
        return f"schedule:{self.name}:{iso_utc(fire)}"

    def next_fires(self, after: dt.datetime, count: int) -> list[dt.datetime]:
        """Return the ``count`` fire times that follow ``after``."""
        fires: list[dt.datetime] = []
        cursor = after
        for _ in range(count):
            cursor = self.rule.next_fire(cursor)
            fires.append(cursor)
        return fires


class PeriodicDecorator(Protocol):
    """The decorator that ``@app.periodic(...)`` returns, which schedules a function or a task."""

    @overload
    def __call__(self, fn: Task[P, R]) -> Task[P, R]: ...

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]]) -> Task[P, R]: ...

    @overload
    def __call__(self, fn: Callable[P, R]) -> Task[P, R]: ...


def build_rule(
    cron: str | None,
    every: dt.timedelta | None,
    timezone: str | ZoneInfo,
    start: dt.datetime | None,
) -> CronRule | IntervalRule:
    """Check the rule options of ``app.periodic`` and build the rule."""
    zone = load_zone(timezone)
    if (cron is None) == (every is None):
        raise ConfigurationError("a periodic task needs exactly one of cron= or every=")
    if cron is not None:
        if start is not None:
            raise ConfigurationError("start= applies to every= schedules only, not to cron=")
        return CronRule(cron, zone)
    assert every is not None
    return IntervalRule(every, UNIX_EPOCH if start is None else start, zone)


def declare(
    app: App,
    target: Callable[..., Any],
    rule: CronRule | IntervalRule,
    *,
    name: str | None,
    queue: str | None,
    args: Sequence[Any],
    kwargs: Mapping[str, Any] | None,
    catch_up: str,
    max_catch_up: int,
    task_options: dict[str, Any],
) -> Task[Any, Any]:
    """Register ``target`` as a task (unless it is one) and its schedule on ``app``.

    The call is checked and encoded once here, so a schedule whose arguments
    do not fit its task fails at import rather than at every fire.
    """
    if catch_up not in ("skip", "latest", "all"):
        raise ConfigurationError(f"catch_up must be 'skip', 'latest' or 'all', got {catch_up!r}")
    if type(max_catch_up) is not int or max_catch_up < 1:
        raise ConfigurationError(f"max_catch_up must be a positive integer, got {max_catch_up!r}")
    if isinstance(target, Task):
        if task_options or (queue is not None and queue != target.options.queue):
            raise ConfigurationError(
                f"{target.name} is a task already; set its queue and options with "
                "@app.task, not with @app.periodic"
            )
        task = target
    else:
        task = app.task(name=name, queue=queue or "default", **task_options)(target)
    schedule_name = name or task.name
    if not isinstance(schedule_name, str) or not 0 < len(schedule_name) <= MAX_NAME_LENGTH:
        raise ConfigurationError(
            f"schedule name must be a string of 1 to {MAX_NAME_LENGTH} characters, "
            f"got {schedule_name!r}"
        )
    if schedule_name in app.schedules:
        raise ConfigurationError(f"a schedule named {schedule_name!r} is declared already")
    call_kwargs = dict(kwargs or {})
    task.prepare(tuple(args), call_kwargs, None, None, None, None)
    policy = cast(CatchUp, catch_up)
    app.schedules[schedule_name] = Schedule(
        schedule_name, task, rule, tuple(args), call_kwargs, policy, max_catch_up
    )
    return task


def load_zone(timezone: str | ZoneInfo) -> ZoneInfo:
    """Return the IANA zone ``timezone``; raise ``ConfigurationError`` naming it if unknown."""
    if isinstance(timezone, ZoneInfo):
        return timezone
    if not isinstance(timezone, str) or not timezone:
        raise ConfigurationError(f"timezone must be an IANA zone name, got {timezone!r}")
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(
            f"unknown time zone {timezone!r}; use an IANA name such as 'Europe/Berlin' or 'UTC'"
        ) from None


def iso_utc(moment: dt.datetime) -> str:
    """Return ``moment`` as ISO 8601 in UTC with a ``Z`` suffix, e.g. ``2024-03-31T01:30:00Z``."""
    utc = _to_utc(moment, "moment")
    spec = "microseconds" if utc.microsecond else "seconds"
    return utc.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def parse_iso_utc(text: str) -> dt.datetime:
    """Parse a time written by :func:`iso_utc` back into an aware UTC datetime."""
    return _to_utc(dt.datetime.fromisoformat(text), "time")


def _to_utc(moment: dt.datetime, what: str) -> dt.datetime:
    if not isinstance(moment, dt.datetime):
        raise ConfigurationError(f"{what} must be a datetime, got {type(moment).__name__}")
    if moment.tzinfo is None or moment.tzinfo.utcoffset(moment) is None:
        raise ConfigurationError(
            f"{what} {moment.isoformat()} has no time zone; pass an aware datetime, "
            "e.g. datetime(2024, 1, 1, tzinfo=timezone.utc)"
        )
    return moment.astimezone(dt.UTC)
