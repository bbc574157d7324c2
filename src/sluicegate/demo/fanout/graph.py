"""A seeded synthetic follower graph with a heavy-tailed follower count.

Each user's follower count is drawn from a Pareto distribution, so most
users have a few followers and a few users have thousands, as in real
social networks. The followers themselves are a uniform sample of the
other users. The same ``seed`` always gives the same graph.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass

logger = logging.getLogger(__name__)

#: Shape of the Pareto distribution of follower counts; below 2 its variance is infinite.
PARETO_ALPHA = 1.3

#: Follower count of the Pareto distribution's minimum sample (scale parameter).
PARETO_SCALE = 4.0


@dataclass(frozen=True, slots=True)
class GraphSpec:
    """The parameters of a synthetic graph: user ids run from 0 to ``users - 1``."""

    users: int
    seed: int
    alpha: float = PARETO_ALPHA
    scale: float = PARETO_SCALE

    def __post_init__(self) -> None:
        if self.users < 2:
            raise ValueError(f"users must be at least 2, got {self.users}")
        if self.alpha <= 0 or self.scale <= 0:
            raise ValueError(f"alpha and scale must be positive, got {self.alpha}, {self.scale}")


def follower_counts(spec: GraphSpec) -> list[int]:
    """Return each user's follower count, at most ``users - 1`` (everyone else)."""
    rng = random.Random(spec.seed)
    max_count = spec.users - 1
    return [
        min(max_count, int(spec.scale * rng.paretovariate(spec.alpha)) - 1)
        for _ in range(spec.users)
    ]


def generate_edges(spec: GraphSpec) -> Iterator[tuple[int, int]]:
    """Yield ``(followee_id, follower_id)`` pairs; no user follows themselves."""
    rng = random.Random(spec.seed + 1)
    for user_id, count in enumerate(follower_counts(spec)):
        # Sample from the other users: ids above user_id shift down by one.
        for other in rng.sample(range(spec.users - 1), count):
            yield user_id, other if other < user_id else other + 1
