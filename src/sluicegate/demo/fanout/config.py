"""Names shared by the fan-out App, its load generator and the runner."""

from __future__ import annotations

STORE_ENV = "SLUICEGATE_FANOUT_STORE"
SOCIAL_DB_ENV = "SLUICEGATE_FANOUT_SOCIAL_DB"
MAX_LENGTH_ENV = "SLUICEGATE_FANOUT_MAX_LENGTH"

#: The queue of the delivery jobs.
QUEUE = "fanout"

#: Name of the task that adds one post to a batch of followers' timelines.
DELIVER_TASK = "fanout.deliver"

#: ``module:attribute`` of the App, for ``sluicegate serve`` and ``sluicegate worker``.
APP_SPEC = "sluicegate.demo.fanout.app:app"
