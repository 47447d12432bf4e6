"""Real parts for tests: redis-server processes on free ports, waiting helpers.

Nothing here mocks Redis: every RedisServer is a real ``redis-server`` process
with AOF persistence on, in its own temporary directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from herd.tools.harness import free_port, port_open, wait_until  # noqa: F401 (re-exported for tests)
from herd.tools.resp import Resp, encode_command, read_reply  # noqa: F401 (re-exported for tests)

REPO = Path(__file__).resolve().parent.parent


class RedisServer:
    """A real redis-server on a free loopback port with the shipped
    ops/redis/redis.conf (AOF on, appendfsync always).

    ``start()`` returns once the server answers PING. The data directory
    survives ``kill()``/``start()`` so tests can check durability.
    """

    def __init__(self, data_dir: Path, port: int | None = None, appendfsync: str = "always"):
        self.data_dir = data_dir
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.proc: subprocess.Popen[bytes] | None = None
        data_dir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is not installed (run ops/setup.sh)"
        self.proc = subprocess.Popen(
            [exe, str(REPO / "ops" / "redis" / "redis.conf"),  # the shipped config, then overrides
             "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
             "--appendonly", "yes", "--appendfsync", self.appendfsync, "--save", "",
             "--daemonize", "no", "--logfile", str(self.data_dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: self.ping(), what=f"redis-server on port {self.port}")
        return self

    def ping(self) -> bool:
        """True once Redis serves data commands (not while it loads its AOF)."""
        try:
            return isinstance(self.command("DBSIZE"), int)
        except (OSError, RuntimeError):
            return False

    def command(self, *args: str | bytes) -> object:
        """Run one command over a fresh connection; return the decoded RESP reply
        (bytes, int, None or list). Raises OSError when Redis is unreachable and
        RuntimeError on a Redis error reply."""
        with Resp(self.port) as redis:
            return redis.command(*args)

    def hgetall(self, key: str | bytes) -> dict[bytes, bytes]:
        items = self.command("HGETALL", key)
        assert isinstance(items, list)
        return dict(zip(items[0::2], items[1::2], strict=True))

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


def env_with(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


def redis_with_store(case: Any, prefix: str, timeout: float = 5.0) -> tuple[RedisServer, Any]:
    """A fresh redis-server and a started RedisStore on it for a trial test
    case; both are stopped by the case's cleanups."""
    from twisted.internet import reactor

    from config.schema import RedisAddress
    from storage.store import RedisStore

    redis = RedisServer(Path(tempfile.mkdtemp(prefix=prefix))).start()
    case.addCleanup(redis.kill)
    store = RedisStore(reactor, RedisAddress(redis.url, "127.0.0.1", redis.port), b"herd:", timeout=timeout)
    store.start()
    case.addCleanup(store.stop)
    return redis, store
