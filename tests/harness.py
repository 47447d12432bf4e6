"""Real parts for tests: the process harness of herd.tools.harness (real
redis-server and node processes on free ports, waits), and a RedisStore on a
fresh Redis for trial test cases.

Nothing here mocks Redis: every RedisProcess is a real ``redis-server``
process with the shipped ops/redis/redis.conf, in its own directory.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from herd.tools.harness import (  # noqa: F401 (re-exported for tests)
    REPO,
    RedisProcess,
    child_env,
    free_port,
    port_open,
    wait_until,
)
from herd.tools.resp import Resp  # noqa: F401 (re-exported for tests)


def redis_with_store(case: Any, prefix: str, timeout: float = 5.0) -> tuple[RedisProcess, Any]:
    """A fresh redis-server and a started RedisStore on it for a trial test
    case; both are stopped by the case's cleanups."""
    from twisted.internet import reactor

    from config.schema import RedisAddress
    from storage.store import RedisStore

    redis = RedisProcess(Path(tempfile.mkdtemp(prefix=prefix))).start()
    case.addCleanup(redis.kill)
    store = RedisStore(reactor, RedisAddress(redis.url, "127.0.0.1", redis.port), b"herd:", timeout=timeout)
    store.start()
    case.addCleanup(store.stop)
    return redis, store
