"""Real HTTP servers on loopback standing in for nodes' admin endpoints, for
testing ``herd status`` and ``herd check`` without running nodes.

``FakeNode`` answers ``GET /status`` with a canned document (or a sequence of
them, one per request), ``SilentNode`` accepts connections and never answers,
and ``refused_port()`` is a port nothing listens on.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from herd.tools.harness import free_port

DIGEST = "00a1b2c3d4e5f607"


def status_doc(name: str, clients: int | None = 12, digest: str | None = DIGEST, redis: str = "up",
               links: dict[str, str] | None = None, skew: float = 0.0, **extra: Any) -> dict[str, Any]:
    """A /status document as the SPEC's node serves it; ``links``: peer ->
    "up" | "down"; ``skew``: seconds its clock is ahead of this machine's."""
    clock = time.time() + skew
    return {"node": name, "version": "0.2.0", "protocol": "2", "clock": clock, "started": clock - 100,
            "pid": 1234, "clients": clients, "digest": digest, "last_update": clock - 1.5,
            "requests": 4567, "rate": 12.0, "redis": {"state": redis, "address": "127.0.0.1:6400"},
            "links": {p: {"state": s, "connections": int(s == "up")} for p, s in (links or {}).items()},
            "listen": {"client": "127.0.0.1:10000", "peer": "127.0.0.1:20000", "admin": "127.0.0.1:30000"},
            "flood": {"in": 10, "duplicate": 2, "out": 20}, "syncs": 3, **extra}


Answer = dict[str, Any] | tuple[int, bytes]


class FakeNode:
    """Serves /status: each request gets the next of ``answers`` (the last one
    again once they run out); an answer is a document, or (code, raw body), or
    a function called (in the server's thread) for one of those."""

    def __init__(self, *answers: Answer | Callable[[], Answer], host: str = "127.0.0.1"):
        self.answers = list(answers)
        self.requests = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                answer = owner.next_answer() if self.path == "/status" else (404, b"not found")
                if callable(answer):
                    answer = answer()
                code, body = answer if isinstance(answer, tuple) else (200, json.dumps(answer).encode())
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        server = type("Server", (ThreadingHTTPServer,), {"address_family": socket.getaddrinfo(host, 0)[0][0]})
        self.server = server((host, 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def next_answer(self) -> Answer | Callable[[], Answer]:
        self.requests += 1
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SilentNode:
    """Accepts connections and never sends a byte (a hung node)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.listener.close()
        for conn in self.held:
            conn.close()


def refused_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    return free_port()


def write_config(path: Path, admin: dict[str, int | str | None],
                 peers: dict[str, list[str]] | None = None) -> Path:
    """A herd config whose node NAME has its admin endpoint at
    127.0.0.1:admin[NAME] (a string: that address; "off" for None); client,
    peer and Redis ports are free ones nothing listens on. No node lists a
    secret."""
    out = ['[herd]\nsecret_env = "HERD_STATUS_TEST_NO_SUCH_SECRET"\n\n[places]\nprovider = "offline"\n']
    for name, port in admin.items():
        where = "off" if port is None else port if isinstance(port, str) else f"127.0.0.1:{port}"
        out.append(f'[nodes.{name}]\nhost = "127.0.0.1"\nport = {free_port()}\npeer_port = {free_port()}\n'
                   f'admin = "{where}"\nredis = "redis://127.0.0.1:{free_port()}/0"\n'
                   f'peers = {json.dumps((peers or {}).get(name, []))}\n')
    path.write_text("\n".join(out))
    return path


def row(frame: str, name: str) -> str:
    """The row of node ``name`` in a ``herd status`` frame."""
    return next(r for r in frame.splitlines() if r.startswith(f"{name} "))
