"""Real parts for tests: the process harness of herd.tools.harness (real
redis-server and node processes on free ports, waits), and RedisStores for
trial test cases: on one redis-server shared by the whole session, under a
key prefix of their own, or on a fresh one for tests that stop or pause it.

Nothing here mocks Redis: every RedisProcess is a real ``redis-server``
process with the shipped ops/redis/redis.conf, in its own directory.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
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

_shared: RedisProcess | None = None
_prefixes = itertools.count()


def fresh_redis(prefix: str) -> RedisProcess:
    """A started redis-server of its own, its data in a new temporary
    directory; discard_redis kills it and removes that."""
    return RedisProcess(Path(tempfile.mkdtemp(prefix=prefix))).start()


def discard_redis(redis: RedisProcess) -> None:
    redis.kill()
    shutil.rmtree(redis.data_dir, ignore_errors=True)


def shared_redis() -> RedisProcess:
    """The session's one redis-server (started on first use; conftest.py
    stops it when the session ends)."""
    global _shared
    if _shared is None:
        _shared = fresh_redis("herd-tests-redis-")
    return _shared


def stop_shared_redis() -> None:
    if _shared is not None:
        discard_redis(_shared)


class PrefixedRedis:
    """A test's view of the shared Redis: its keys are written ``herd:...`` in
    the test, and read under the test's own prefix."""

    def __init__(self, redis: RedisProcess, prefix: str):
        self.redis, self.prefix = redis, prefix

    def _key(self, arg: Any) -> Any:
        if isinstance(arg, str) and arg.startswith("herd:"):
            return self.prefix + arg[5:]
        if isinstance(arg, bytes) and arg.startswith(b"herd:"):
            return self.prefix.encode() + arg[5:]
        return arg

    def call(self, *args: Any) -> Any:
        return self.redis.call(*map(self._key, args))

    def hgetall(self, key: Any) -> dict[bytes, bytes]:
        return self.redis.hgetall(self._key(key))


def redis_with_store(case: Any, prefix: str, timeout: float = 5.0, own: bool = False) -> tuple[Any, Any]:
    """A started RedisStore for a trial test case, stopped by the case's
    cleanups, and the Redis under it: by default the session's shared
    redis-server under a key prefix of this store's own (a PrefixedRedis);
    with ``own``, a fresh redis-server (a RedisProcess, killed by the
    cleanups) for tests that stop, pause or fill it."""
    from twisted.internet import reactor

    from config.schema import RedisAddress
    from storage.store import RedisStore

    if own:
        redis: Any = fresh_redis(prefix)
        case.addCleanup(discard_redis, redis)
        server, key_prefix = redis, "herd:"
    else:
        server, key_prefix = shared_redis(), f"{prefix}{next(_prefixes)}:"
        redis = PrefixedRedis(server, key_prefix)
    address = RedisAddress(server.url, "127.0.0.1", server.port)
    store = RedisStore(reactor, address, key_prefix.encode(), timeout=timeout)
    store.start()
    case.addCleanup(store.stop)
    return redis, store


def herd_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m herd ARGS`` from the checkout: its exit code and output."""
    return subprocess.run([sys.executable, "-m", "herd", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env=env)


def store_settled(store: Any, timeout: float = 10.0) -> Any:
    """For trial tests: a Deferred that fires once ``store`` (a started
    RedisStore) has nothing queued, no batch in flight and no call unanswered,
    seen twice 10 ms apart: what the calls made before led to in Redis has
    happened (timers other than the store's must run on a Clock)."""
    from storage.redis_client import RedisProtocol

    def quiet() -> bool:
        conn = store._connection()
        unanswered = isinstance(conn, RedisProtocol) and conn.unanswered_since() is not None
        return store.backlog == 0 and not store._sent_at and store._batch_call is None and not unanswered

    seen = [0]

    def twice() -> bool:
        seen[0] = seen[0] + 1 if quiet() else 0
        return seen[0] >= 2

    return until(twice, "the store to settle", timeout)


def until(predicate: Callable[[], bool], what: str, timeout: float = 5.0, every: float = 0.01) -> Any:
    """For trial tests: a Deferred that fires once ``predicate`` is true,
    checked every ``every`` s while the reactor runs, and fails naming
    ``what`` after ``timeout`` s."""
    from twisted.internet import reactor
    from twisted.internet.defer import inlineCallbacks
    from twisted.internet.task import deferLater

    @inlineCallbacks
    def poll() -> Any:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
            yield deferLater(reactor, every, lambda: None)

    return poll()
