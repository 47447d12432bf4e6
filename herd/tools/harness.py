"""The one process harness for herd's tools and tests: free ports, waiting for
a port, and the config sections of nodes started on this machine.

A node on a free port cannot use the default peer and admin ports (port +
10000, + 20000: taken, or above 65535), so the harness gives each node three
free ports of its own.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago, never the same one
    twice in this process (two servers started together must not race for one)."""
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    return [free_port(host) for _ in range(n)]


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition",
               every: float = 0.01) -> None:
    """Poll ``predicate`` every ``every`` s until it is true; raise TimeoutError
    naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


@dataclass(frozen=True)
class NodePorts:
    """Where a node started by the harness listens."""

    client: int
    peer: int
    admin: int

    @classmethod
    def free(cls, host: str = "127.0.0.1") -> NodePorts:
        return cls(*free_ports(3, host))


def node_section(name: str, host: str, ports: NodePorts, redis_url: str, peers: Sequence[str],
                 extra: str = "") -> str:
    """A ``[nodes.NAME]`` TOML section for a node listening on ``ports``."""
    return (f'[nodes.{name}]\nhost = "{host}"\nport = {ports.client}\npeer_port = {ports.peer}\n'
            f'admin = "{host}:{ports.admin}"\nredis = "{redis_url}"\npeers = {json.dumps(list(peers))}\n'
            + extra)
