"""The fan-out App for ``sluicegate serve`` and ``sluicegate worker``.

Importing this module builds the App from three environment variables,
which ``sluicegate demo fanout`` sets for the server and the worker it
starts. ``SLUICEGATE_FANOUT_STORE`` is the sluicegate SQLite store file,
``SLUICEGATE_FANOUT_SOCIAL_DB`` the social app's own SQLite file, and
``SLUICEGATE_FANOUT_MAX_LENGTH`` the bound of the fan-out queue. The server
enforces that bound, so a post made while the queue is full gets a 503.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading

from sluicegate.app import App
from sluicegate.demo.fanout import social
from sluicegate.demo.fanout.config import (
    DELIVER_TASK,
    MAX_LENGTH_ENV,
    QUEUE,
    SOCIAL_DB_ENV,
    STORE_ENV,
)
from sluicegate.errors import ConfigurationError

logger = logging.getLogger(__name__)


def _require(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ConfigurationError(
            f"{name} is not set; `sluicegate demo fanout` sets it for the processes it starts"
        )
    return value


def _max_length() -> int:
    value = _require(MAX_LENGTH_ENV)
    try:
        return int(value)
    except ValueError:
        raise ConfigurationError(f"{MAX_LENGTH_ENV} must be an integer, got {value!r}") from None


app = App(f"sqlite:///{os.path.abspath(_require(STORE_ENV))}")
app.queue(QUEUE, max_length=_max_length())
_social_path = os.path.abspath(_require(SOCIAL_DB_ENV))
_local = threading.local()


def _social() -> sqlite3.Connection:
    """Return this thread's connection to the social database."""
    conn: sqlite3.Connection | None = getattr(_local, "conn", None)
    if conn is None:
        conn = social.connect(_social_path)
        _local.conn = conn
    return conn


@app.task(name=DELIVER_TASK, queue=QUEUE)
def deliver(post_id: int, follower_ids: list[int]) -> int:
    """Add the post to each follower's timeline; return how many entries were new.

    Fewer new entries than followers means the job ran before, so the
    idempotent insert skipped the entries it had written then.
    """
    added = social.deliver(_social(), post_id, follower_ids)
    if added < len(follower_ids):
        logger.info(
            "delivery repeated post_id=%d followers=%d new=%d", post_id, len(follower_ids), added
        )
    return added
