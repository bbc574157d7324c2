"""Signals and the two-step stop: finish within a grace period, then give back."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Shutdown:
    """The worker's stop state.

    The first SIGTERM or SIGINT sets ``requested``: the worker stops
    reserving and lets running jobs finish for up to ``grace`` seconds. The
    second signal, or the end of the grace period, sets ``giving_back``: the
    unfinished jobs are given back to their queues (nack without delay, the
    attempt not counted) and the worker exits.
    """

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.requested = False
        self.giving_back = False

    def install(self, loop: asyncio.AbstractEventLoop, on_signal: Callable[[], None]) -> None:
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, self._handle, signum, on_signal)

    def uninstall(self, loop: asyncio.AbstractEventLoop) -> None:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)

    def request(self) -> None:
        self.requested = True

    def give_back(self) -> None:
        if not self.giving_back:
            logger.warning("grace period over, giving running jobs back grace_s=%g", self.grace)
        self.giving_back = True

    def _handle(self, signum: int, on_signal: Callable[[], None]) -> None:
        self.on_signal(signum)
        on_signal()

    def on_signal(self, signum: int) -> None:
        """Move one step on: stop reserving, or, if that was asked already, give back."""
        name = signal.Signals(signum).name
        if not self.requested:
            logger.info("stop requested signal=%s grace_s=%g", name, self.grace)
            self.requested = True
        else:
            logger.warning("second stop signal, giving running jobs back now signal=%s", name)
            self.giving_back = True
