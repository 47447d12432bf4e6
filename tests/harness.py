"""Real parts for tests: redis-server processes on free ports, waiting helpers.

Nothing here mocks Redis: every RedisServer is a real ``redis-server`` process
with AOF persistence on, in its own temporary directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from herd.tools.resp import Resp, encode_command, read_reply  # noqa: F401 (re-exported for tests)

REPO = Path(__file__).resolve().parent.parent


_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, never the same one
    twice in this process (two servers of one test must not race for a port)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` every 10 ms until it is true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


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
