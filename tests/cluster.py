"""A herd of real processes for integration tests: herd.tools.harness's
LocalHerd (one redis-server and one ``python -m herd serve`` per node, on free
loopback ports) with a real HTTP server on loopback standing in for the Google
Places API.

Readiness is waited for on signals (ports accepting, log lines saying a
link is up), never on fixed sleeps.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from herd.tools.harness import LocalHerd, LocalNode  # noqa: F401 (LocalNode re-exported for tests)

SECRET = "integration-test-secret"
PLACES_KEY = "test-places-key"

# SPEC section 5: the shipped five-node topology.
FIVE = {
    "Bailey": ["Bona", "Campbell"],
    "Bona": ["Bailey", "Campbell", "Clark"],
    "Campbell": ["Bailey", "Bona", "Jaquez"],
    "Clark": ["Bona", "Jaquez"],
    "Jaquez": ["Campbell", "Clark"],
}


class FakePlaces:
    """A real HTTP server on loopback answering like Google's Nearby Search:
    25 results for any well-formed request, ``delay`` seconds after it came,
    recording every request and the most it held at once."""

    def __init__(self) -> None:
        self.requests: list[dict[str, list[str]]] = []
        self.delay = 0.0
        self.most_at_once = 0
        held = [0]
        lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                with lock:
                    held[0] += 1
                    owner.most_at_once = max(owner.most_at_once, held[0])
                try:
                    time.sleep(owner.delay)
                    self.answer()
                finally:
                    with lock:
                        held[0] -= 1

            def answer(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                owner.requests.append(query)
                lat, lng = (float(x) for x in query["location"][0].split(","))
                results = [{"name": f"Place {i}", "place_id": f"p{i}",
                            "geometry": {"location": {"lat": lat, "lng": lng}},
                            "vicinity": "Nowhere\n\n\nStreet"} for i in range(25)]
                body = json.dumps({"html_attributions": [], "results": results,
                                   "status": "OK"}, indent=3).encode() + b"\n\n"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/nearbysearch/json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Herd(LocalHerd):
    """Nodes with the given links (name -> peers listed in its config), their
    places provider the FakePlaces; ``stop`` kills everything at once."""

    def __init__(self, root: Path, topology: Mapping[str, Sequence[str]], provider: str = "google",
                 secret: str = SECRET, extra_herd: str = "", extra_node: str = "", access_log: bool = True):
        self.places = FakePlaces()
        places = (f'provider = "{provider}"\nurl = "{self.places.url}"\n'
                  'key_env = "GOOGLE_PLACES_KEY"\ntimeout = 2.0')
        self.places_lines = places
        super().__init__(root, topology, secret=secret, places=places, env={"GOOGLE_PLACES_KEY": PLACES_KEY},
                         herd_extra=extra_herd, node_extra=extra_node, stop_grace=0, access_log=access_log)

    def stop(self) -> None:
        super().stop()
        self.places.close()


def talk(port: int, *lines: bytes | str, timeout: float = 10.0, terminate: bool = True) -> bytes:
    """Send lines to a node, half-close, and return everything it sends back
    until it closes the connection."""
    data = b"".join((x.encode() if isinstance(x, str) else x) + b"\n" for x in lines)
    if not terminate:
        data = data[:-1]
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


LOADING = b"-LOADING Redis is loading the dataset in memory\r\n"


class RedisProxy:
    """Loopback TCP proxy to a Redis. Once armed with a marker, the first chunk
    from the node containing the marker is passed to Redis, Redis's answer is
    swallowed, and both connections are closed; everything else passes.
    Other modes: ``drop`` closes both without passing the chunk to Redis;
    ``hold`` passes nothing more on that connection until the node closes it.
    With ``loading`` seconds, connections made after it fired are answered
    ``-LOADING`` for that long, as a restarted Redis replaying its AOF does."""

    def __init__(self, redis_port: int, mode: str = "eat_reply", loading: float = 0.0):
        self.redis_port = redis_port
        self.mode = mode
        self.loading = loading
        self.loading_until = 0.0
        self.loading_replies = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.marker: bytes | None = None
        self.fired = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                node, _ = self.listener.accept()
            except OSError:
                return
            redis = socket.create_connection(("127.0.0.1", self.redis_port))
            state = {"swallow": False}
            threading.Thread(target=self._up, args=(node, redis, state), daemon=True).start()
            threading.Thread(target=self._down, args=(redis, node, state), daemon=True).start()

    def _up(self, node: socket.socket, redis: socket.socket, state: dict[str, bool]) -> None:
        held = b""  # the start of a command not yet whole, read while "loading"
        try:
            while chunk := node.recv(65536):
                chunk, held = held + chunk, b""
                if time.monotonic() < self.loading_until:
                    # A command may come in several reads: each whole one is answered once.
                    whole, held = resp_commands(chunk)
                    self.loading_replies += whole
                    node.sendall(LOADING * whole)
                    continue
                if self.marker is not None and self.marker in chunk and not self.fired.is_set():
                    state["swallow"] = True
                    if self.mode == "eat_reply":
                        redis.sendall(chunk)
                        time.sleep(0.3)  # Redis runs it (and fsyncs); its reply is eaten
                    self.loading_until = time.monotonic() + self.loading
                    self.fired.set()
                    while self.mode == "hold" and node.recv(65536):
                        pass
                    break
                redis.sendall(chunk)
        except OSError:
            pass
        for s in (node, redis):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    @staticmethod
    def _down(redis: socket.socket, node: socket.socket, state: dict[str, bool]) -> None:
        try:
            while chunk := redis.recv(65536):
                if not state["swallow"]:
                    node.sendall(chunk)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()


def resp_commands(data: bytes) -> tuple[int, bytes]:
    """How many whole RESP commands (arrays of bulk strings) ``data`` starts
    with, and what follows them (the start of the next one)."""
    count, done = 0, 0
    while True:
        at = _command_end(data, done)
        if at is None:
            return count, data[done:]
        count, done = count + 1, at


def _command_end(data: bytes, at: int) -> int | None:
    """Where the command starting at ``at`` ends, or None when it is not whole there."""
    end = data.find(b"\r\n", at)
    if not data.startswith(b"*", at) or end < 0:
        return None
    items, at = int(data[at + 1:end]), end + 2
    for _ in range(items):
        end = data.find(b"\r\n", at)
        if end < 0:
            return None
        at = end + 2 + int(data[at + 1:end]) + 2
        if at > len(data):
            return None
    return at
