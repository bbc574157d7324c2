"""The scheduler: one leader among any number of processes enqueues each fire once.

Leadership: every scheduler tries to take the store lock ``scheduler`` for
``lease`` seconds. The holder renews it every third of the lease and is the
only one that fires. The others retry when the lease they saw expires, so
when a leader dies another takes over about one lease later.

Exactly once per fire: each fire is enqueued with the idempotency key
``schedule:<name>:<fire time in ISO UTC>``, so two leaders during a split
(a stalled leader whose lease ran out) enqueue one job, not two. The store
also keeps, under ``schedule:<name>``, the time through which fires were
handled, the last fire and its job id, and a fingerprint of the rule. A
restarted scheduler continues from there: it neither repeats the last fire
nor loses the next one.

Fires that passed while no scheduler ran follow the schedule's ``catch_up``:

- ``"skip"`` (default): none is enqueued, except the latest if its time is
  at most ``ON_TIME_GRACE`` seconds ago (a takeover right after a fire time
  still enqueues that fire).
- ``"latest"``: the latest one is enqueued, however late.
- ``"all"``: all are enqueued, oldest first, up to the newest
  ``max_catch_up`` of them.

Skipped fires are logged with their count. A new schedule, and a schedule
whose rule changed (cron string, interval, start or time zone), counts its
fires from the moment the scheduler first sees it, so neither fires for
past slots.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

from sluicegate.errors import ConfigurationError, QueueFull
from sluicegate.schedule import Schedule, iso_utc, parse_iso_utc
from sluicegate.store import Store

if TYPE_CHECKING:
    from sluicegate.app import App
    from sluicegate.backends.base import Backend

logger = logging.getLogger(__name__)

#: Default lease, in seconds, of the leader lock.
DEFAULT_LEASE = 30.0

#: Name of the store lock that the leader holds.
LEADER_LOCK = "scheduler"

#: Prefix of the store keys that keep each schedule's last fire.
STATE_PREFIX = "schedule:"

#: Seconds a fire may be late and still count as on time under ``catch_up="skip"``.
ON_TIME_GRACE = 60.0

#: Maximum sleep, in seconds, between two ticks, which bounds the effect of a wall-clock step.
MAX_SLEEP = 60.0

#: Seconds before a schedule whose fire failed with a store error is tried again.
ERROR_BACKOFF = 1.0

#: Attempts to store a schedule's state when another scheduler changed it meanwhile.
_STATE_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class ScheduleState:
    """The state the store keeps for one schedule.

    ``through`` is the time up to which every fire was handled (enqueued or
    skipped); ``last_fire`` and ``job_id`` name the last fire enqueued.
    """

    fingerprint: str
    through: dt.datetime
    last_fire: dt.datetime | None = None
    job_id: str | None = None

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "fingerprint": self.fingerprint,
                "through": iso_utc(self.through),
                "last_fire": None if self.last_fire is None else iso_utc(self.last_fire),
                "job_id": self.job_id,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> ScheduleState:
        """Parse stored state; raise ``ValueError`` if it is not a valid state."""
        try:
            document = orjson.loads(data)
            last_fire = document["last_fire"]
            return cls(
                fingerprint=str(document["fingerprint"]),
                through=parse_iso_utc(document["through"]),
                last_fire=None if last_fire is None else parse_iso_utc(last_fire),
                job_id=document["job_id"],
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ConfigurationError) as exc:
            raise ValueError(f"invalid schedule state {data[:200]!r}: {exc}") from None


@dataclass(frozen=True, slots=True)
class Fire:
    """One fire handed to the store: ``created`` is false if another scheduler enqueued it."""

    schedule: str
    fire_time: dt.datetime
    job_id: str
    created: bool


@dataclass(frozen=True, slots=True)
class TickResult:
    """The outcome of one :meth:`Scheduler.tick`; ``wake_at`` is Unix time on its clock."""

    leader: bool
    wake_at: float
    fires: list[Fire] = field(default_factory=list)


def state_key(name: str) -> str:
    """Return the store key of schedule ``name``'s state."""
    return STATE_PREFIX + name


def read_state(store: Store, name: str) -> tuple[bytes | None, ScheduleState | None]:
    """Return the raw stored state of schedule ``name`` and its parsed form.

    Unreadable state is logged and returned as no state, so the schedule
    starts over from now rather than stopping.
    """
    raw = store.get_value(state_key(name))
    if raw is None:
        return None, None
    try:
        return raw, ScheduleState.decode(raw)
    except ValueError as exc:
        logger.warning("schedule state unreadable, starting over schedule=%s error=%s", name, exc)
        return raw, None


def default_holder() -> str:
    """Return a holder id unique to this scheduler: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Scheduler:
    """Enqueues the fires of ``app.schedules`` while it leads; see the module docs.

    Parameters:
      app: the App whose schedules to fire. Schedules added to
        ``app.schedules`` later are picked up at the next tick.
      lease: seconds the leader lock lasts without renewal; a dead leader is
        replaced after about this long.
      clock: returns the current Unix time in seconds; tests pass a
        controllable one and drive :meth:`tick` themselves.
      backend: the store to use; default ``app.backend``.
      holder: this scheduler's id in the lock; default ``host:pid:random``.
      lock_name: the leader lock; schedulers of unrelated apps that share
        one store need different names.
    """

    def __init__(
        self,
        app: App,
        *,
        lease: float = DEFAULT_LEASE,
        clock: Callable[[], float] = time.time,
        backend: Backend | None = None,
        holder: str | None = None,
        lock_name: str = LEADER_LOCK,
    ) -> None:
        if isinstance(lease, bool) or not isinstance(lease, int | float) or not lease > 0:
            raise ConfigurationError(f"lease must be a positive number of seconds, got {lease!r}")
        self.app = app
        self.lease = float(lease)
        self.clock = clock
        self.holder = holder or default_holder()
        self.lock_name = lock_name
        self.leader = False
        self._backend = backend
        self._leader_until = 0.0
        self._renew_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"Scheduler(holder={self.holder!r}, leader={self.leader})"

    @property
    def backend(self) -> Backend:
        return self._backend if self._backend is not None else self.app.backend

    # -- running

    def run(self) -> None:
        """Tick until :meth:`stop` is called, sleeping until the next fire or renewal."""
        logger.info(
            "scheduler started holder=%s schedules=%d lease_s=%g",
            self.holder,
            len(self.app.schedules),
            self.lease,
        )
        try:
            while not self._stop.is_set():
                try:
                    wake_at = self.tick().wake_at
                except Exception:
                    logger.exception("scheduler tick failed holder=%s", self.holder)
                    wake_at = self.clock() + ERROR_BACKOFF
                self._stop.wait(min(max(wake_at - self.clock(), 0.0), MAX_SLEEP))
        finally:
            self.step_down()
            logger.info("scheduler stopped holder=%s", self.holder)

    def start(self) -> threading.Thread:
        """Run :meth:`run` in a daemon thread and return the thread."""
        self._thread = threading.Thread(target=self.run, name="sluicegate-scheduler", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the loop to stop; wait up to ``timeout`` seconds for a thread from :meth:`start`."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def step_down(self) -> None:
        """Release the leader lock if this scheduler holds it."""
        if not self.leader:
            return
        self.leader = False
        try:
            self.backend.release_lock(self.lock_name, self.holder)
        except Exception:
            logger.exception("leadership release failed holder=%s", self.holder)
            return
        logger.info("leadership released holder=%s", self.holder)

    # -- one tick

    def tick(self) -> TickResult:
        """Renew or seek leadership when due; as leader, enqueue every due fire.

        Returns when the scheduler should tick next: the earliest next fire,
        lease renewal or retry, as Unix time on ``clock``.
        """
        now = self.clock()
        if now >= self._renew_at:
            self._refresh_leadership(now)
        if not self.leader or now >= self._leader_until:
            return TickResult(False, self._renew_at)
        wake_at = self._renew_at
        fires: list[Fire] = []
        for schedule in list(self.app.schedules.values()):
            try:
                fired, next_fire = self._handle(schedule, now)
            except QueueFull as exc:
                logger.warning(
                    "schedule fire rejected, queue full schedule=%s queue=%s retry_after_s=%.2f",
                    schedule.name,
                    exc.queue,
                    exc.retry_after,
                )
                wake_at = min(wake_at, now + exc.retry_after)
                continue
            except Exception:
                logger.exception("schedule fire failed schedule=%s", schedule.name)
                wake_at = min(wake_at, now + ERROR_BACKOFF)
                continue
            fires.extend(fired)
            wake_at = min(wake_at, next_fire)
        return TickResult(True, wake_at, fires)

    def _refresh_leadership(self, now: float) -> None:
        try:
            held = self.backend.acquire_lock(self.lock_name, self.holder, self.lease)
        except Exception:
            logger.exception("leader lock request failed holder=%s", self.holder)
            held = False
        if held:
            if not self.leader:
                logger.info("leadership acquired holder=%s lease_s=%g", self.holder, self.lease)
            self.leader = True
            self._leader_until = now + self.lease
            self._renew_at = now + self.lease / 3
            return
        current = self._current_holder()
        if self.leader:
            logger.warning(
                "leadership lost holder=%s new_holder=%s", self.holder, current and current[0]
            )
        self.leader = False
        # Try again just after the lease we saw ends; a renewed lease just means another wait.
        expiry = current[1] if current is not None else now
        self._renew_at = min(max(expiry + 0.01, now + 0.05), now + self.lease)

    def _current_holder(self) -> tuple[str, float] | None:
        try:
            return self.backend.lock_holder(self.lock_name)
        except Exception:
            logger.exception("leader lock lookup failed holder=%s", self.holder)
            return None

    # -- one schedule

    def _handle(self, schedule: Schedule, now: float) -> tuple[list[Fire], float]:
        """Enqueue the due fires of one schedule; return them and the next fire (Unix time)."""
        moment = dt.datetime.fromtimestamp(now, dt.UTC)
        for _ in range(_STATE_ATTEMPTS):
            raw, state = read_state(self.backend, schedule.name)
            through, last_fire, job_id = self._starting_point(schedule, state, moment)
            due = self._due_fires(schedule, through, moment)
            chosen = self._apply_catch_up(schedule, due, moment)
            fires = self._enqueue(schedule, chosen)
            if fires:
                last_fire, job_id = fires[-1].fire_time, fires[-1].job_id
            new_state = ScheduleState(
                schedule.fingerprint, due[0] if due else through, last_fire, job_id
            )
            if new_state == state or self.backend.compare_and_set(
                state_key(schedule.name), raw, new_state.encode()
            ):
                return fires, schedule.rule.next_fire(new_state.through).timestamp()
            logger.debug("schedule state changed meanwhile, retrying schedule=%s", schedule.name)
        # Another scheduler keeps writing this state; its fires are enqueued once all the same.
        return [], now + ERROR_BACKOFF

    def _starting_point(
        self, schedule: Schedule, state: ScheduleState | None, moment: dt.datetime
    ) -> tuple[dt.datetime, dt.datetime | None, str | None]:
        if state is None:
            logger.info(
                "schedule added schedule=%s rule=%r first_fire=%s",
                schedule.name,
                schedule.rule.definition,
                iso_utc(schedule.rule.next_fire(moment)),
            )
            return moment, None, None
        if state.fingerprint != schedule.fingerprint:
            logger.info(
                "schedule definition changed, counting fires from now schedule=%s rule=%r",
                schedule.name,
                schedule.rule.definition,
            )
            return moment, state.last_fire, state.job_id
        return state.through, state.last_fire, state.job_id

    def _due_fires(
        self, schedule: Schedule, through: dt.datetime, moment: dt.datetime
    ) -> list[dt.datetime]:
        """Return the fires in ``(through, moment]``, newest first, at most ``max_catch_up + 1``."""
        fires: list[dt.datetime] = []
        cursor = moment
        for _ in range(schedule.max_catch_up + 1):
            fire = schedule.rule.latest_fire(cursor)
            if fire is None or fire <= through:
                break
            fires.append(fire)
            cursor = fire - dt.timedelta(microseconds=1)
        return fires

    def _apply_catch_up(
        self, schedule: Schedule, due: list[dt.datetime], moment: dt.datetime
    ) -> list[dt.datetime]:
        """Return the due fires to enqueue, oldest first, and log the ones skipped."""
        if not due:
            return []
        if schedule.catch_up == "all":
            chosen = due[: schedule.max_catch_up]
        elif schedule.catch_up == "latest":
            chosen = due[:1]
        else:
            on_time = (moment - due[0]).total_seconds() <= ON_TIME_GRACE
            chosen = due[:1] if on_time else []
        skipped = due[len(chosen) :]
        if skipped:
            logger.warning(
                "schedule missed fires schedule=%s catch_up=%s skipped=%d%s oldest=%s newest=%s",
                schedule.name,
                schedule.catch_up,
                len(skipped),
                "+" if len(due) > schedule.max_catch_up else "",
                iso_utc(skipped[-1]),
                iso_utc(skipped[0]),
            )
        return chosen[::-1]

    def _enqueue(self, schedule: Schedule, chosen: list[dt.datetime]) -> list[Fire]:
        if not chosen:
            return []
        task = schedule.task
        jobs = [
            task.prepare(
                schedule.args,
                dict(schedule.kwargs),
                None,
                fire,  # The eta: a fire is never ready before its time, and a past one runs now.
                None,
                schedule.idempotency_key(fire),
            )
            for fire in chosen
        ]
        results = self.backend.enqueue_jobs(jobs, self.app.bounds(task.options.queue))
        fires = []
        for fire, result in zip(chosen, results, strict=True):
            fires.append(Fire(schedule.name, fire, result.job_id, result.created))
            logger.info(
                "schedule fired schedule=%s fire_time=%s job_id=%s created=%s",
                schedule.name,
                iso_utc(fire),
                result.job_id,
                str(result.created).lower(),
            )
        return fires
