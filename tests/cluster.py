"""A herd of real processes for integration tests: one redis-server and one
``python -m herd serve`` per node, on free loopback ports, plus a real HTTP
server on loopback standing in for the Google Places API.

Readiness is waited for on signals (ports accepting, log lines saying a
link is up), never on fixed sleeps.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from harness import REPO, RedisServer, env_with, port_open, wait_until

from herd.tools.harness import NodePorts, node_section

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
    25 results for any well-formed request, recording every request."""

    def __init__(self) -> None:
        self.requests: list[dict[str, list[str]]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
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


class NodeProcess:
    def __init__(self, herd: Herd, name: str):
        self.herd = herd
        self.name = name
        self.ports = NodePorts.free()
        self.port = self.ports.client
        self.redis = RedisServer(herd.root / name / "redis")
        self.log_path = herd.root / name / "herd.log"  # its stdout and stderr: the event log
        self.access_log_path = herd.root / name / "access.log"  # (set in the herd's config)
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "herd", "serve", self.name, "--config", str(self.herd.config)]

    def start(self, wait: bool = True, ignore_sigint: bool = False, **env: str) -> NodeProcess:
        """Start the node; ``ignore_sigint``: as a shell's background job would."""
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.command(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            env=env_with(**{"HERD_SECRET": self.herd.secret, "GOOGLE_PLACES_KEY": PLACES_KEY, **env}),
            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None,
        )
        log.close()
        if wait:
            wait_until(lambda: port_open(self.port), what=f"node {self.name} listening")
        return self

    def kill(self, sig: int = signal.SIGKILL) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=15)
        self.proc = None
        return code

    def log(self) -> str:
        """The node's event log (its output) so far."""
        return self.log_path.read_text(errors="replace")

    def access_log(self) -> str:
        """The node's access log so far (lines are written every 100 ms)."""
        try:
            return self.access_log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def record(self, client_id: str) -> dict[bytes, bytes]:
        return self.redis.hgetall(f"herd:client:{client_id}")


class Herd:
    """Nodes with the given links (name -> peers listed in its config). Each
    node's access log is ``<root>/<node>/access.log``, unless ``extra_herd``
    sets ``access_log`` or ``access_log`` is False (the default path then)."""

    def __init__(self, root: Path, topology: dict[str, list[str]], provider: str = "google",
                 secret: str = SECRET, extra_herd: str = "", extra_node: str = "", access_log: bool = True):
        self.root = root
        self.secret = secret
        self.places = FakePlaces()
        self.nodes = {name: NodeProcess(self, name) for name in topology}
        self.config = root / "herd.toml"
        self.config.write_text(self._toml(topology, provider, extra_herd, extra_node, access_log))

    def _toml(self, topology: dict[str, list[str]], provider: str, extra_herd: str,
              extra_node: str, access_log: bool = True) -> str:
        if access_log and "access_log =" not in extra_herd:
            extra_herd += f'\naccess_log = "{self.root}/{{node}}/access.log"'
        out = [f'[herd]\nsecret_env = "HERD_SECRET"\n{extra_herd}\n',
               f'[places]\nprovider = "{provider}"\nurl = "{self.places.url}"\n'
               'key_env = "GOOGLE_PLACES_KEY"\ntimeout = 2.0\n']
        for name, peers in topology.items():
            node = self.nodes[name]
            out.append(node_section(name, "127.0.0.1", node.ports,
                                    node.redis.url, peers, extra_node.format(name=name)))
        return "\n".join(out)

    def start(self, names: Iterable[str] | None = None) -> Herd:
        names = list(names or self.nodes)
        for name in names:
            self.nodes[name].redis.start()
        for name in names:
            self.nodes[name].start(wait=False)
        for name in names:
            node = self.nodes[name]
            wait_until(lambda n=node: port_open(n.port), what=f"node {node.name} listening")
        return self

    def wait_links(self, timeout: float = 15.0) -> None:
        """Wait until every running node logged a link up to each running neighbour."""
        running = [n for n in self.nodes.values() if n.proc is not None]
        for node in running:
            for peer in self.neighbours(node.name):
                if self.nodes[peer].proc is not None:
                    wait_until(lambda n=node, p=peer: f"peer {p} link up" in n.log(),
                               timeout, what=f"link {node.name}-{peer}")

    def neighbours(self, name: str) -> set[str]:
        topo = {n: set(p) for n, p in self._topology().items()}
        return topo[name] | {n for n, peers in topo.items() if name in peers}

    def _topology(self) -> dict[str, list[str]]:
        import tomllib

        data = tomllib.loads(self.config.read_text())
        return {name: node.get("peers", []) for name, node in data["nodes"].items()}

    def stop(self) -> None:
        for node in self.nodes.values():
            node.kill(signal.SIGKILL)
            node.redis.kill()
        self.places.close()

    def __getitem__(self, name: str) -> NodeProcess:
        return self.nodes[name]


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
        try:
            while chunk := node.recv(65536):
                if time.monotonic() < self.loading_until:
                    self.loading_replies += resp_commands(chunk)
                    node.sendall(LOADING * resp_commands(chunk))
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


def resp_commands(chunk: bytes) -> int:
    """How many complete RESP commands (arrays of bulk strings) ``chunk`` holds."""
    count, at = 0, 0
    while chunk.startswith(b"*", at):
        end = chunk.index(b"\r\n", at)
        items, at = int(chunk[at + 1:end]), end + 2
        for _ in range(items):
            end = chunk.index(b"\r\n", at)
            at = end + 2 + int(chunk[at + 1:end]) + 2
        count += 1
    return count
