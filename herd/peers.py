"""The node's authenticated peer links, and the services that dial them.

A link to a peer exists while at least one authenticated connection to it is
open, whichever side dialled it. Flooding sends each update once per peer,
over that peer's oldest open connection.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger

if TYPE_CHECKING:
    from herd.connection import PeerDialer
    from herd.node import Node

log = Logger(namespace="herd")

# Jittered exponential backoff for dialling a peer that is down: 0.1 s
# doubling to 5 s, plus up to a quarter second of jitter, retried forever.
PEER_RETRY = backoffPolicy(initialDelay=0.1, maxDelay=5.0, factor=2.0,
                           jitter=lambda: random.random() * 0.25)
HANDSHAKE_TIMEOUT = 5.0


class PeerConnection(Protocol):
    peer_name: bytes | None

    def send_line(self, line: bytes) -> None: ...


class PeerLinks:
    """Registry of open authenticated peer connections, by peer name."""

    def __init__(self, neighbours: Iterable[bytes]):
        self.neighbours = frozenset(neighbours)
        self._open: dict[bytes, list[PeerConnection]] = {name: [] for name in self.neighbours}
        self.on_link_up: list[Callable[[bytes, PeerConnection], None]] = []

    def is_neighbour(self, name: bytes) -> bool:
        return name in self.neighbours

    def add(self, name: bytes, conn: PeerConnection, how: str) -> None:
        conns = self._open[name]
        conns.append(conn)
        log.info("peer {peer} link up ({how}; {n} open connection(s))",
                 peer=name.decode(), how=how, n=len(conns))
        for callback in self.on_link_up:
            callback(name, conn)

    def remove(self, name: bytes, conn: PeerConnection) -> None:
        conns = self._open[name]
        if conn in conns:
            conns.remove(conn)
            state = "still up" if conns else "down"
            log.info("peer {peer} connection dropped; link {state}", peer=name.decode(), state=state)

    def up(self) -> list[bytes]:
        """Names of peers with at least one open authenticated connection."""
        return sorted(name for name, conns in self._open.items() if conns)

    def flood(self, line: bytes, exclude: bytes | None = None) -> int:
        """Send ``line`` to every linked peer except ``exclude``; returns how many."""
        sent = 0
        for name, conns in self._open.items():
            if conns and name != exclude:
                conns[0].send_line(line)
                sent += 1
        return sent

    def close_all(self) -> None:
        for conns in self._open.values():
            for conn in list(conns):
                conn.transport.loseConnection()  # type: ignore[attr-defined]


class _DialerFactory(Factory):
    noisy = False

    def __init__(self, build: Callable[[], PeerDialer]):
        self._build = build

    def buildProtocol(self, addr: Any) -> PeerDialer:
        return self._build()


def dial_service(reactor: Any, node: Node, own: bytes, peer: bytes, host: str, port: int,
                 secret: bytes) -> ClientService:
    """A ClientService that keeps an authenticated connection to ``peer`` up,
    redialling with jittered exponential backoff forever. A connection counts
    as made only once the handshake succeeded, so a peer that refuses us (wrong
    secret) is retried with backoff, not in a tight loop."""
    from herd.connection import PeerDialer

    endpoint = HostnameEndpoint(reactor, host, port, timeout=HANDSHAKE_TIMEOUT)
    factory = _DialerFactory(lambda: PeerDialer(node, own, peer, secret))

    def authenticated(protocol: Any) -> Any:
        return protocol.authenticated.addTimeout(HANDSHAKE_TIMEOUT, reactor)

    return ClientService(endpoint, factory, retryPolicy=PEER_RETRY,
                         prepareConnection=authenticated)
