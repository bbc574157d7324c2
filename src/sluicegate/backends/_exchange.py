"""``reserve`` and ``settle`` as the one-sided cases of a backend's ``exchange``."""

from __future__ import annotations

from collections.abc import Sequence

from sluicegate.broker import Settlement
from sluicegate.message import Delivery


class ExchangeShortcuts:
    """Give a backend ``reserve`` and ``settle`` in terms of its ``exchange``."""

    def exchange(
        self,
        settlements: Sequence[Settlement],
        queues: Sequence[str],
        limit: int,
        lease: float,
        worker: str,
    ) -> tuple[list[bool], list[Delivery]]:
        raise NotImplementedError

    def reserve(
        self, queues: Sequence[str], limit: int, lease: float, worker: str
    ) -> list[Delivery]:
        """Lease up to ``limit`` ready messages; see :meth:`exchange`."""
        return self.exchange((), queues, limit, lease, worker)[1]

    def settle(self, settlements: Sequence[Settlement]) -> list[bool]:
        """Settle deliveries; see :meth:`exchange`."""
        return self.exchange(settlements, (), 0, 0.0, "")[0]
