"""What a node counts about itself. Plain integers on the hot path; exported
at scrape time (herd/admin/) and published to Redis for ``herd status``."""

from __future__ import annotations

import bisect
import time
from collections import Counter
from dataclasses import dataclass, field

# Upper bounds (seconds) of the Redis call latency histogram buckets.
REDIS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 5.0)


@dataclass
class Stats:
    started: float = field(default_factory=time.time)
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)  # (command, outcome)
    # Updates from peers (flooded, or in SYNC answers), disjoint: newer than
    # what was held (stored here), or not (nothing stored). One whose storing
    # failed counts in neither (reconciliation brings it again).
    flood_in: int = 0
    flood_duplicate: int = 0
    places_calls: int = 0
    places_failures: int = 0
    last_update: float = 0.0  # wall time of the last update stored (0: none known)
    rate: float = 0.0  # client requests per second over the last tick
    _ticked_total: int = field(default=0, init=False, repr=False)
    redis_buckets: list[int] = field(default_factory=lambda: [0] * (len(REDIS_BUCKETS) + 1))
    redis_sum: float = 0.0
    # Calls Redis refused because it could not take writes, by reason (its
    # error's first word: OOM when full under maxmemory, LOADING, MISCONF, ...).
    redis_refused: Counter[str] = field(default_factory=Counter)
    # The reason of the last refusal while Redis still refuses ("" once it took
    # a write again): "OOM" means full, the alert of docs/OPERATIONS.md.
    redis_refusing: str = ""

    def request(self, command: str, outcome: str, count: int = 1) -> None:
        self.requests[(command, outcome)] += count

    def observe_redis(self, seconds: float) -> None:
        self.redis_buckets[bisect.bisect_left(REDIS_BUCKETS, seconds)] += 1
        self.redis_sum += seconds

    def refused_by_redis(self, reason: str) -> None:
        self.redis_refused[reason] += 1
        self.redis_refusing = reason

    def redis_serves(self) -> None:
        """Redis took a write again (the store's ``on_connected``)."""
        self.redis_refusing = ""

    @property
    def redis_full(self) -> bool:
        """Redis refuses writes for lack of memory (maxmemory reached, noeviction)."""
        return self.redis_refusing == "OOM"

    def stored(self) -> None:
        self.last_update = time.time()

    def recall_last_update(self, when: float) -> None:
        """Take ``when`` (from an earlier run) as the last update, unless this
        run has stored one since."""
        if not self.last_update:
            self.last_update = when

    def tick(self, interval: float) -> None:
        """Called every ``interval`` seconds: ``rate`` becomes the requests
        per second since the previous tick."""
        total = self.total_requests
        self.rate, self._ticked_total = (total - self._ticked_total) / interval, total

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())
