"""A count of the forks that led to this process, read without a system call.

Per-process state (connections, locks, blocks of enqueue slots) must not be
used again in a child that ``fork()`` made. Comparing the generation an
object was made in with :data:`generation` detects a fork without a system
call, where ``os.getpid()`` costs one on every enqueue.
"""

from __future__ import annotations

import os

#: Grows by one in every child process that ``fork()`` makes.
generation = 0


def _count_fork() -> None:
    global generation
    generation += 1


os.register_at_fork(after_in_child=_count_fork)
