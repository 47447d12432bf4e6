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

from storage.store import Position

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

    connected: int  # Twisted's Protocol.connected: 1 while the connection is open

    def send_line(self, line: bytes) -> None: ...


LinkCallback = Callable[[bytes, PeerConnection], None]
LossCallback = Callable[[bytes, PeerConnection, PeerConnection | None], None]


class PeerLinks:
    """Registry of open authenticated peer connections, by peer name, and the
    chain of log positions flooded to each peer (see herd.reconcile)."""

    def __init__(self, neighbours: Iterable[bytes]):
        self.neighbours = frozenset(neighbours)
        self._open: dict[bytes, list[PeerConnection]] = {name: [] for name in self.neighbours}
        # peer -> (connection the chain runs on, last position sent on it, or
        # None while a SYNC answer is being sent on it)
        self._chain: dict[bytes, tuple[PeerConnection, Position | None]] = {}
        self.on_link_up: list[LinkCallback] = []  # (peer, connection) when a link comes up
        self.on_connection_lost: list[LossCallback] = []  # (peer, lost, another open one)
        self.flooded = 0
        # peer -> newest log position not sent to it because it came from it
        self._skipped: dict[bytes, Position] = {}

    def is_neighbour(self, name: bytes) -> bool:
        return name in self.neighbours

    def add(self, name: bytes, conn: PeerConnection, how: str) -> None:
        conns = self._open[name]
        conns.append(conn)
        log.info("peer {peer} link up ({how}; {n} open connection(s))",
                 peer=name.decode(), how=how, n=len(conns))
        if len(conns) == 1:
            for callback in self.on_link_up:
                callback(name, conn)

    def remove(self, name: bytes, conn: PeerConnection) -> None:
        conns = self._open[name]
        if conn not in conns:
            return
        conns.remove(conn)
        state = "still up" if conns else "down"
        log.info("peer {peer} connection dropped; link {state}", peer=name.decode(), state=state)
        if name in self._chain and self._chain[name][0] is conn:
            del self._chain[name]
        for callback in self.on_connection_lost:
            callback(name, conn, conns[0] if conns else None)

    def up(self) -> list[bytes]:
        """Names of peers with at least one open authenticated connection."""
        return sorted(name for name, conns in self._open.items() if conns)

    def first_connections(self) -> list[tuple[bytes, PeerConnection]]:
        """(peer, its oldest open connection) for every linked peer."""
        return [(name, conns[0]) for name, conns in sorted(self._open.items()) if conns]

    def flood(self, at_line: bytes, position: Position, exclude: bytes | None = None) -> int:
        """Send an update stored at ``position`` in our log to every linked peer
        except ``exclude``. Where a chain runs (see herd.reconcile) the update
        goes on the chain's connection, after the previous position sent there;
        elsewhere on the oldest connection, starting no chain."""
        sent = 0
        if exclude is not None and exclude in self._chain:
            self._skipped[exclude] = position
        for name, conns in self._open.items():
            if not conns or name == exclude:
                continue
            conn, prev = self._chain.get(name) or (conns[0], None)
            conn.send_line(b"U %s %s %s" % (prev.token if prev else b"-", position.token, at_line))
            if name in self._chain and prev is not None:
                self._chain[name] = (conn, position)
            sent += 1
        self.flooded += sent
        return sent

    def send_skips(self) -> int:
        """Tell each chained peer how far our log moved with updates that came
        from it (``K <prev> <pos>``), so its offset keeps up and a later SYNC
        does not walk over them. Called about once a second."""
        sent = 0
        for name, position in list(self._skipped.items()):
            conn, prev = self._chain.get(name) or (None, None)
            del self._skipped[name]
            if conn is None or prev is None:
                continue
            conn.send_line(b"K %s %s" % (prev.token, position.token))
            self._chain[name] = (conn, position)
            sent += 1
        return sent

    def restart_chain(self, name: bytes, conn: PeerConnection) -> None:
        """A SYNC answer to ``name`` starts on ``conn``: updates flooded meanwhile go
        on the same connection, unchained, so they arrive before its SYNC-END."""
        self._skipped.pop(name, None)
        if conn in self._open.get(name, ()):
            self._chain[name] = (conn, None)

    def continue_chain(self, name: bytes, conn: PeerConnection, position: Position) -> None:
        """From now on flood to ``name`` over ``conn``, chained on from ``position``
        (the SYNC-END just sent on ``conn``)."""
        if conn in self._open.get(name, ()):
            self._chain[name] = (conn, position)

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
                 secret: bytes, tls_options: Any = None) -> ClientService:
    """A ClientService that keeps an authenticated connection to ``peer`` up,
    redialling with jittered exponential backoff forever. A connection counts
    as made only once the handshake succeeded, so a peer that refuses us (wrong
    secret) is retried with backoff, not in a tight loop."""
    from herd.connection import PeerDialer

    endpoint = HostnameEndpoint(reactor, host, port, timeout=HANDSHAKE_TIMEOUT)
    factory = _DialerFactory(lambda: PeerDialer(node, own, peer, secret, tls_options))

    def authenticated(protocol: Any) -> Any:
        return protocol.authenticated.addTimeout(HANDSHAKE_TIMEOUT, reactor)

    return ClientService(endpoint, factory, retryPolicy=PEER_RETRY,
                         prepareConnection=authenticated)
