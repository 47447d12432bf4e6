"""A tiny blocking Redis client for herd's tools and tests (bench, chaos, the
test harness): plain sockets, RESP2, pipelining. Not the serving path: nodes
talk to Redis only through txredisapi (storage/store.py)."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import IO, Any

Arg = str | bytes | int


def encode_command(*args: Arg) -> bytes:
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def read_reply(f: IO[bytes]) -> Any:
    """One reply: bytes, int, None or a list. An error reply raises RuntimeError;
    a closed connection raises OSError."""
    line = f.readline()
    if not line:
        raise OSError("Redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RuntimeError(rest.decode(errors="replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [read_reply(f) for _ in range(n)]
    raise OSError(f"bad RESP reply {line!r}")


class Resp:
    """One connection to a Redis on loopback, authenticated with ``password``
    if given; commands may be pipelined. Raises OSError when Redis is
    unreachable, RuntimeError on an error reply."""

    def __init__(self, port: int, timeout: float = 5.0, host: str = "127.0.0.1",
                 password: str | None = None):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.file = self.sock.makefile("rb")
        if password:
            try:
                self.command("AUTH", password)
            except BaseException:
                self.close()
                raise

    def __enter__(self) -> Resp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def command(self, *args: Arg) -> Any:
        return self.pipeline([args])[0]

    call = command

    def pipeline(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        self.sock.sendall(b"".join(encode_command(*c) for c in commands))
        return [read_reply(self.file) for _ in commands]

    def scan(self, pattern: bytes) -> list[bytes]:
        """Every key matching ``pattern`` (SCAN, so Redis is not blocked)."""
        keys: list[bytes] = []
        cursor = b"0"
        while True:
            cursor, batch = self.command("SCAN", cursor, "MATCH", pattern, "COUNT", "1000")
            keys.extend(batch)
            if cursor == b"0":
                return keys
