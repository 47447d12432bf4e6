"""What every test shares. The tiers are folders:

- tests/unit/: pure code, no Redis, no processes (sockets on loopback at most);
- tests/redis/: against the session's one redis-server (a key prefix per test,
  harness.redis_with_store), or a fresh one where a test stops it;
- tests/herd/: whole herds of real node processes; marked ``slow``.

The fast tiers alone: ``bash ops/test.sh -m "not slow"``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import stop_shared_redis

HERD_TIER = Path(__file__).parent / "herd"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERD_TIER in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.slow)


def pytest_sessionfinish(session: pytest.Session) -> None:
    stop_shared_redis()
