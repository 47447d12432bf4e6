"""The node's authenticated peer links, and the services that dial them.

A link to a peer exists while at least one authenticated connection to it is
open, whichever side dialled it. Flooding sends each update once per peer:
on the connection its reconciliation chain runs on (see herd.reconcile), or
else on its oldest open connection.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from herd.protocol import AtRecord
from storage.store import Position

if TYPE_CHECKING:
    from herd.connection import PeerDialer
    from herd.node import Node

log = Logger(namespace="herd")

# Jittered exponential backoff for dialling a peer that is down: 0.1 s
# doubling to 5 s, plus up to a quarter second of jitter, retried forever.
PEER_RETRY = backoffPolicy(initialDelay=0.1, maxDelay=5.0, factor=2.0,
                           jitter=lambda: random.random() * 0.25)


class PeerConnection(Protocol):
    peer_name: bytes | None

    connected: int  # Twisted's Protocol.connected: 1 while the connection is open
    lines_in: int  # lines received from the peer since it authenticated
    transport: Any

    def send_line(self, line: bytes) -> None: ...


PULL = b"PULL"  # "SYNC from me": my log has entries your offset may have skipped
FORWARD = b"F"  # an update forwarded before it was stored here (cut-through)
SKIP = b"K"
NO_POSITION = b"-"
MAX_HOLDS = 64  # forwarded entries named in one K line


def hold_of(record: AtRecord) -> tuple[bytes, bytes, bytes, bytes]:
    """How a K line names a record: client id, client-time, server, skew (two
    records of one client with the same time differ in server or skew)."""
    return record.client_id, record.time.text, record.server, record.skew


class _Chain:
    """Flooding state towards one peer, on one connection. ``sent``: the last
    log position sent to it (None while a SYNC answer is under way: updates
    then go unchained). ``covered``: the last position such that every log
    entry up to it was sent to the peer, came from it, or was forwarded to it
    (``F``) before being stored. ``holds``: client id, time, server and skew of
    each entry since ``sent`` that was forwarded to it; ``unconfirmed``: the
    same of each entry since ``sent`` that came from it as ``F`` and that none
    of its own K lines has named yet (naming an update there means it stored
    it). The peer may move past them only if it holds them."""

    __slots__ = ("conn", "sent", "covered", "holds", "unconfirmed")

    def __init__(self, conn: PeerConnection, sent: Position | None, covered: Position | None):
        self.conn = conn
        self.sent = sent
        self.covered = covered
        self.holds: list[bytes] = []
        self.unconfirmed: dict[tuple[bytes, ...], None] = {}


LinkCallback = Callable[[bytes, PeerConnection], None]
LossCallback = Callable[[bytes, PeerConnection, PeerConnection | None], None]


class PeerLinks:
    """Registry of open authenticated peer connections, by peer name, and the
    chain of log positions flooded to each peer (see herd.reconcile)."""

    def __init__(self, neighbours: Iterable[bytes]):
        self.neighbours = frozenset(neighbours)
        self._open: dict[bytes, list[PeerConnection]] = {name: [] for name in self.neighbours}
        self._chain: dict[bytes, _Chain] = {}
        self.on_link_up: list[LinkCallback] = []  # (peer, connection) when a link comes up
        self.on_connection_lost: list[LossCallback] = []  # (peer, lost, another open one)
        self.flooded = 0

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
        if name in self._chain and self._chain[name].conn is conn:
            del self._chain[name]
        for callback in self.on_connection_lost:
            callback(name, conn, conns[0] if conns else None)

    def up(self) -> list[bytes]:
        """Names of peers with at least one open authenticated connection."""
        return sorted(name for name, conns in self._open.items() if conns)

    def first_connections(self) -> list[tuple[bytes, PeerConnection]]:
        """(peer, its oldest open connection) for every linked peer."""
        return [(name, conns[0]) for name, conns in sorted(self._open.items()) if conns]

    def forward(self, at_line: bytes, source: bytes | None) -> frozenset[bytes]:
        """Cut-through: send an update known to be newer than what we hold, before
        it is stored here, as ``F <AT line>`` on the chain of every chained peer
        except ``source``. Returns the names it went to, for :meth:`flood` once
        the update is stored (unchained peers get it from there, as ``U``)."""
        sent = []
        for name, chain in self._chain.items():
            if chain.sent is not None and name != source:
                chain.conn.send_line(FORWARD + b" " + at_line)
                sent.append(name)
        self.flooded += len(sent)
        return frozenset(sent)

    def flood(self, record: AtRecord, position: Position, previous: Position | None,
              source: bytes | None = None, forwarded: frozenset[bytes] = frozenset(),
              source_holds: bool = True) -> int:
        """Send an update stored at ``position`` in our log (right after
        ``previous`` there) to every linked peer except ``source`` and except
        those it was forwarded to.

        Where a chain runs (see herd.reconcile) the update goes on the chain's
        connection as ``U <last sent> <position>``, which lets the peer advance
        its offset, but only if every log entry since the last one sent is
        known to have reached it, to have come from it, or to be held there
        (a ``K`` naming the forwarded entries goes first). If ``previous``
        shows an entry we never saw stored (its Redis reply was lost), the
        chain breaks: the peer is sent ``PULL`` and fetches the gap with a
        SYNC. Elsewhere the update goes unchained on the oldest connection.
        Unless ``source_holds``, the update came from ``source`` as ``F``: the
        ``K`` that moves its offset past it names it too, unless ``source``
        has named it in a K of its own first (see :meth:`stored_there`)."""
        sent = 0
        hold: tuple[bytes, bytes, bytes, bytes] | None = None
        for name, conns in self._open.items():
            if not conns:
                continue
            chain = self._chain.get(name)
            if chain is not None and chain.sent is not None:
                if chain.covered == previous:
                    chain.covered = position
                else:
                    del self._chain[name]
                    chain.conn.send_line(PULL)
                    chain = None
            live = chain if chain is not None and chain.sent is not None else None
            if live is not None and name == source and not source_holds:
                hold = hold or hold_of(record)
                live.unconfirmed[hold] = None
                continue
            if live is not None and name in forwarded:
                hold = hold or hold_of(record)
                live.holds.extend(hold)
                if len(live.holds) >= 4 * MAX_HOLDS:
                    self._send_skip(live, position)
                continue
            if name == source:
                continue
            if live is not None:
                if live.holds or live.unconfirmed:
                    self._send_skip(live, previous)  # type: ignore[arg-type]
                live.conn.send_line(b"U %s %s %s" % (live.sent.token, position.token, record.line))  # type: ignore[union-attr]
                live.sent = position
            else:
                conn = chain.conn if chain is not None else conns[0]
                conn.send_line(b"U - %s %s" % (position.token, record.line))
            sent += 1
        self.flooded += sent
        return sent

    def send_skips(self) -> int:
        """Tell each chained peer how far our log moved with updates that came
        from it or were forwarded to it (``K <prev> <pos> [<id> <time> <server> <skew>]...``),
        so its offset keeps up and a later SYNC does not walk over them.
        Called several times a second."""
        sent = 0
        for chain in self._chain.values():
            if chain.sent is not None and chain.covered != chain.sent:
                self._send_skip(chain, chain.covered)  # type: ignore[arg-type]
                sent += 1
        return sent

    @staticmethod
    def _send_skip(chain: _Chain, to: Position) -> None:
        unconfirmed = [field for hold in chain.unconfirmed for field in hold]
        line = b" ".join((SKIP, chain.sent.token, to.token, *chain.holds, *unconfirmed))  # type: ignore[union-attr]
        chain.conn.send_line(line)
        chain.sent = to
        chain.holds = []
        chain.unconfirmed = {}

    def stored_there(self, name: bytes, holds: list[bytes]) -> None:
        """``name``'s K line named these updates (client id, time, server, skew,
        ...): it has stored them, so our K lines need not ask it about them."""
        chain = self._chain.get(name)
        if chain is not None and chain.unconfirmed:
            for i in range(0, len(holds), 4):
                chain.unconfirmed.pop(tuple(holds[i:i + 4]), None)

    def restart_chain(self, name: bytes, conn: PeerConnection) -> None:
        """A SYNC answer to ``name`` starts on ``conn``: updates flooded meanwhile go
        on the same connection, unchained, so they arrive before its SYNC-END."""
        if conn in self._open.get(name, ()):
            self._chain[name] = _Chain(conn, None, None)

    def continue_chain(self, name: bytes, conn: PeerConnection, position: Position) -> None:
        """From now on flood to ``name`` over ``conn``, chained on from ``position``
        (the SYNC-END just sent on ``conn``: the peer has our log up to it)."""
        if conn in self._open.get(name, ()):
            self._chain[name] = _Chain(conn, position, position)

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
    """A ClientService that keeps a connection to ``peer`` up, redialling with
    jittered exponential backoff forever; a refused handshake backs off inside
    PeerDialer (see there)."""
    from herd.connection import HANDSHAKE_TIMEOUT, PeerDialer

    endpoint = HostnameEndpoint(reactor, host, port, timeout=HANDSHAKE_TIMEOUT)
    failures = [0]
    factory = _DialerFactory(lambda: PeerDialer(node, own, peer, secret, reactor, failures, tls_options))
    return ClientService(endpoint, factory, retryPolicy=PEER_RETRY)
