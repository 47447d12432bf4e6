"""What every test shares. The tiers are folders:

- tests/unit/: pure code, no Redis, no processes (sockets on loopback at most);
- tests/redis/: against the session's one redis-server (a key prefix per test,
  harness.redis_with_store), or a fresh one where a test stops it;
- tests/herd/: whole herds of real node processes; marked ``slow``.

The fast tiers alone: ``bash ops/test.sh -m "not slow"``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from harness import stop_shared_redis

HERD_TIER = Path(__file__).parent / "herd"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERD_TIER in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.slow)


def pytest_configure(config: pytest.Config) -> None:
    # Every temporary directory the tests make in this process (Redis data
    # directories above all) goes under one, removed when the session ends.
    tempfile.tempdir = tempfile.mkdtemp(prefix="herd-tests-")


def pytest_sessionfinish(session: pytest.Session) -> None:
    stop_shared_redis()
    session_tmp, tempfile.tempdir = tempfile.gettempdir(), None
    shutil.rmtree(session_tmp, ignore_errors=True)
