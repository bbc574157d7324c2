"""The social app's own SQLite file: the follower graph, posts and timelines.

This file is separate from the sluicegate store. ``follows`` is the graph,
``posts`` has one row per post, and ``timelines`` has one row per post in a
user's timeline. The primary key ``(user_id, post_id)`` of ``timelines``
together with ``INSERT OR IGNORE`` makes delivery idempotent, so a job that
runs twice (after a lost lease or a retry) never adds a second entry.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

#: Seconds a connection waits for another writer's lock before raising.
BUSY_TIMEOUT = 30.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS follows (
    followee_id INTEGER NOT NULL,
    follower_id INTEGER NOT NULL,
    PRIMARY KEY (followee_id, follower_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS posts (
    post_id INTEGER PRIMARY KEY,
    author_id INTEGER NOT NULL,
    body TEXT NOT NULL,
    accepted INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS timelines (
    user_id INTEGER NOT NULL,
    post_id INTEGER NOT NULL,
    PRIMARY KEY (user_id, post_id)
) WITHOUT ROWID;
"""


def connect(path: Path | str) -> sqlite3.Connection:
    """Open the social database in WAL mode, creating its tables if needed.

    Each thread needs its own connection, because ``sqlite3`` connections
    are not shared across threads by default.
    """
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.executescript(SCHEMA)
    return conn


def write_follows(conn: sqlite3.Connection, edges: Iterable[tuple[int, int]]) -> None:
    """Insert ``(followee_id, follower_id)`` edges in one transaction."""
    with _transaction(conn):
        conn.executemany("INSERT OR IGNORE INTO follows VALUES (?, ?)", edges)


def followers(conn: sqlite3.Connection, user_id: int) -> list[int]:
    """Return the ids of ``user_id``'s followers, sorted."""
    rows = conn.execute(
        "SELECT follower_id FROM follows WHERE followee_id = ? ORDER BY follower_id", (user_id,)
    ).fetchall()
    return [row[0] for row in rows]


def write_post(conn: sqlite3.Connection, post_id: int, author_id: int, body: str) -> None:
    """Store the post and put it on its author's own timeline, in one transaction."""
    with _transaction(conn):
        conn.execute(
            "INSERT INTO posts (post_id, author_id, body) VALUES (?, ?, ?)",
            (post_id, author_id, body),
        )
        conn.execute("INSERT OR IGNORE INTO timelines VALUES (?, ?)", (author_id, post_id))


def mark_accepted(conn: sqlite3.Connection, post_id: int) -> None:
    """Mark the post accepted: every job that delivers it to a follower is enqueued."""
    conn.execute("UPDATE posts SET accepted = 1 WHERE post_id = ?", (post_id,))


def deliver(conn: sqlite3.Connection, post_id: int, follower_ids: Sequence[int]) -> int:
    """Add the post to each follower's timeline; return how many entries were new."""
    with _transaction(conn):
        before = conn.total_changes
        conn.executemany(
            "INSERT OR IGNORE INTO timelines VALUES (?, ?)",
            ((follower_id, post_id) for follower_id in follower_ids),
        )
        return conn.total_changes - before


def timeline_entries(conn: sqlite3.Connection) -> int:
    """Return the number of rows in all timelines."""
    row = conn.execute("SELECT count(*) FROM timelines").fetchone()
    return int(row[0])


@dataclass(frozen=True, slots=True)
class Verification:
    """The exactly-once check of the accepted posts' timeline entries.

    ``expected`` is the sum over accepted posts of one (the author's own
    timeline) plus the author's follower count. ``missing`` counts expected
    ``(user, post)`` pairs with no entry, ``unexpected`` counts entries of
    accepted posts for users who neither wrote nor follow the author, and
    ``duplicates`` counts pairs with more than one entry.
    """

    accepted_posts: int
    unaccepted_posts: int
    expected: int
    entries: int
    missing: int
    unexpected: int
    duplicates: int

    @property
    def passed(self) -> bool:
        return (
            self.entries == self.expected
            and self.missing == 0
            and self.unexpected == 0
            and self.duplicates == 0
        )


def verify(conn: sqlite3.Connection) -> Verification:
    """Compare the timelines of accepted posts with the follower graph."""
    accepted, unaccepted = conn.execute(
        "SELECT coalesce(sum(accepted), 0), coalesce(sum(1 - accepted), 0) FROM posts"
    ).fetchone()
    expected_pairs = """
        SELECT p.author_id AS user_id, p.post_id FROM posts p WHERE p.accepted = 1
        UNION ALL
        SELECT f.follower_id, p.post_id FROM posts p
        JOIN follows f ON f.followee_id = p.author_id WHERE p.accepted = 1
    """
    expected = _count(conn, f"SELECT count(*) FROM ({expected_pairs})")
    entries = _count(
        conn,
        "SELECT count(*) FROM timelines t JOIN posts p USING (post_id) WHERE p.accepted = 1",
    )
    missing = _count(
        conn,
        f"SELECT count(*) FROM ({expected_pairs}) e WHERE NOT EXISTS "
        "(SELECT 1 FROM timelines t WHERE t.user_id = e.user_id AND t.post_id = e.post_id)",
    )
    unexpected = _count(
        conn,
        f"SELECT count(*) FROM timelines t JOIN posts p USING (post_id) WHERE p.accepted = 1 "
        f"AND (t.user_id, t.post_id) NOT IN (SELECT user_id, post_id FROM ({expected_pairs}))",
    )
    duplicates = _count(
        conn,
        "SELECT count(*) FROM (SELECT 1 FROM timelines GROUP BY user_id, post_id "
        "HAVING count(*) > 1)",
    )
    return Verification(
        accepted_posts=int(accepted),
        unaccepted_posts=int(unaccepted),
        expected=expected,
        entries=entries,
        missing=missing,
        unexpected=unexpected,
        duplicates=duplicates,
    )


def _count(conn: sqlite3.Connection, sql: str) -> int:
    return int(conn.execute(sql).fetchone()[0])


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """Run the block in ``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on an exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
