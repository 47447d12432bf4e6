"""Connections a node accepts: clients, or peers once they have
authenticated (the listening end of the handshake; the dialling end is
herd.peer.dial).

Client contract: requests on one connection are answered in order, each
reply in one write. A WHATSAT starts only after every earlier request on the
connection has been answered, and later requests start only once it has been,
so it sees the updates sent before it and none sent after it. A client that
half-closes still gets every reply, and the connection closes once they are
written.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from herd import logs
from herd.peer.connection import PEER_MAX_LINE, PeerLineMixin, detect_dead_peer
from herd.peer.tls import PeerTls
from herd.wire import handshake as auth
from herd.wire.client import Invalid, Whatsat, parse_request
from herd.wire.lines import LineProtocol
from storage.store import set_no_delay

if TYPE_CHECKING:
    from herd.node import Node

log = Logger(namespace="herd")


def _follow(done: Deferred[None]) -> Deferred[None]:
    """A new Deferred that fires once ``done`` has; what is chained on it cannot
    disturb ``done``'s own callback chain."""
    follower: Deferred[None] = Deferred()

    def fire(result: object) -> object:
        follower.callback(None)
        return result

    done.addBoth(fire)
    return follower


class _Reply:
    """One request's place in the ordered reply queue."""

    __slots__ = ("data", "done")

    def __init__(self) -> None:
        self.data: bytes | None = None
        self.done: Deferred[None] = Deferred()


@implementer(IHalfCloseableProtocol)
class NodeConnection(PeerLineMixin, LineProtocol, TimeoutMixin):
    """A connection accepted by the node: a client until it authenticates.

    Limits (config ``[herd]``): a client silent for ``idle_timeout`` seconds is
    disconnected; with ``max_outstanding`` requests unanswered, reading pauses
    until half of them are answered (back-pressure, nothing is refused).
    """

    factory: NodeConnectionFactory
    node: Node

    def __init__(self) -> None:
        self.peer_name = None
        self._replies: deque[_Reply] = deque()
        # The last WHATSAT's reply slot: requests after it start once it is
        # answered, so it sees the state of the requests before it, no later one.
        self._barrier: Deferred[None] | None = None
        self._handshake: tuple[bytes, bytes, bytes] | None = None
        self._eof = False
        self._closing = False
        self._paused = False
        self._tls = False
        self._spoke_in_tls = False  # a line arrived after the TLS upgrade
        self.closed: Deferred[None] = Deferred()

    # -- connection lifecycle -------------------------------------------

    def connectionMade(self) -> None:
        self.node = self.factory.node
        self.max_line = self.factory.max_line
        peer = self.transport.getPeer()
        self.who = f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
        self.factory.connections.add(self)
        set_no_delay(self.transport)  # replies leave at once, not after the client's ACK
        log.info("{who} connection opened", who=self.who)
        self.setTimeout(self.factory.limits.idle_timeout or None)

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        super().dataReceived(data)

    def timeoutConnection(self) -> None:
        log.info("{who} idle for {s:g}s; closing", who=self.who, s=self.factory.limits.idle_timeout)
        self.close_when_idle()

    def connectionLost(self, reason: Any = None) -> None:
        self.connected = 0  # Twisted leaves it 1; peers' code asks whether a connection is open
        self.setTimeout(None)
        self.factory.connections.discard(self)
        if self.peer_name is not None:
            self.node.links.remove(self.peer_name, self)
        elif self._handshake is not None:
            log.warn("{who} peer handshake abandoned (claimed to be {name})", who=self.who,
                     name=logs.loggable(self._handshake[0]))
        elif self._tls and not self._spoke_in_tls:  # TLS refused the peer, or it left before a word
            log.warn("{who} peer refused or gone during TLS ({why})", who=self.who,
                     why=reason.getErrorMessage() if reason else "")
        log.info("{who} connection closed ({why})", who=self.who,
                 why=reason.getErrorMessage() if reason else "")
        self.closed.callback(None)

    def readConnectionLost(self) -> None:
        log.info("{who} half-closed by client", who=self.who)
        self.flush_partial_line()
        self._eof = True
        self._close_if_idle()

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()

    def close_when_idle(self) -> None:
        """Stop reading; close once every pending reply is written."""
        self.stop_reading()
        self._eof = True
        self._close_if_idle()

    # -- lines ----------------------------------------------------------

    def line_received(self, line: bytes) -> None:
        logs.wire(self.who, "recv", line)
        self._spoke_in_tls = self._tls
        if self.peer_name is not None:
            self.peer_line(line)
            return
        words = line.split(None, 1)
        if words and words[0] == auth.STARTTLS and self.factory.tls is not None and not self._tls:
            self._start_tls()
            return
        if words and words[0] in auth.PEER_WORDS:
            self._answer(succeed(self._handshake_step(line)), line)
            return
        request = parse_request(line, self.factory.clock_ns(), self.factory.max_future_ns)
        if request is None:
            return
        if isinstance(request, Invalid):
            self.node.stats.request("invalid", "refused")
            self._answer(succeed(request.reply), line)
        elif isinstance(request, Whatsat):
            earlier = gatherResults([r.done for r in self._replies]) if self._replies else succeed(None)
            slot = self._answer(earlier.addCallback(lambda _: self.node.handle(request, 0)), line)
            self._barrier = slot.done
        elif self._barrier is not None and not self._barrier.called:
            received = self.factory.clock_ns()
            after = _follow(self._barrier)
            self._answer(after.addCallback(lambda _: self.node.handle(request, received)), line)
        else:
            self._answer(self.node.handle(request, self.factory.clock_ns()), line)

    def line_too_long(self) -> None:
        reply = b"? line too long (limit %d bytes)\n" % self.max_line
        log.warn("{who} line over {limit} bytes; closing", who=self.who, limit=self.max_line)
        self._answer(succeed(reply), b"")
        self._eof = True
        self._close_if_idle()

    # -- ordered replies ------------------------------------------------

    def _answer(self, result: Deferred[bytes], line: bytes) -> _Reply:
        slot = _Reply()
        self._replies.append(slot)
        if len(self._replies) >= self.factory.limits.max_outstanding and not self._paused:
            self._paused = True
            self.transport.pauseProducing()
        result.addErrback(self._internal_error, line)
        result.addCallback(self._fill, slot)
        return slot

    def _internal_error(self, failure: Any, line: bytes) -> bytes:
        log.failure("{who} internal error on {line}", failure, who=self.who, line=logs.loggable(line))
        return b"? " + line + b"\n"

    def _fill(self, data: bytes, slot: _Reply) -> None:
        slot.data = data
        self._flush()
        slot.done.callback(None)

    def _flush(self) -> None:
        ready: list[bytes] = []
        while self._replies and self._replies[0].data is not None:
            ready.append(self._replies.popleft().data)  # type: ignore[arg-type]
        if ready and not self._closing:
            out = b"".join(ready)
            for reply in ready:
                logs.wire(self.who, "sent", reply.rstrip(b"\n"))
            self.transport.write(out)
        if self._paused and len(self._replies) <= self.factory.limits.max_outstanding // 2:
            self._paused = False
            self.transport.resumeProducing()
        self._close_if_idle()

    def _close_if_idle(self) -> None:
        if self._eof and not self._replies and not self._closing:
            self._closing = True
            self.transport.loseConnection()

    # -- peer handshake (listening side) ----------------------------------

    def _start_tls(self) -> None:
        """Answer HERD-STARTTLS: everything after HERD-TLS-OK is TLS."""
        assert self.factory.tls is not None
        self._tls = True
        self.transport.write(auth.TLS_OK + b"\n")
        self.transport.startTLS(self.factory.tls.server)
        log.info("{who} peer link upgraded to TLS", who=self.who)

    def _handshake_step(self, line: bytes) -> bytes:
        """Advance the peer handshake; returns the line to send back."""
        words = line.split()
        own = self.factory.own_name
        if self.factory.tls is not None and not self._tls:
            log.warn("{who} peer handshake refused: TLS is required first", who=self.who)
            return b"? " + line + b"\n"
        if words[0] == auth.HELLO and len(words) in (4, 5):
            _, dialler, listener, nonce_d, *protocol = words
            if protocol != [auth.PROTOCOL]:
                log.warn("{who} peer handshake refused: {peer} speaks peer protocol {theirs}, this node "
                         "{ours}; run the same herd version on every node", who=self.who,
                         peer=logs.loggable(dialler), theirs=logs.loggable(protocol[0]) if protocol else "1",
                         ours=auth.PROTOCOL.decode())
                return b"? " + line + b"\n"
            if listener == own and self.node.links.is_neighbour(dialler) and auth.is_nonce(nonce_d):
                nonce_l = auth.new_nonce()
                self._handshake = (dialler, nonce_d, nonce_l)
                mac_l = auth.mac(self.factory.secret, b"listener", dialler, own, nonce_d, nonce_l)
                return b"%s %s %s\n" % (auth.CHALLENGE, nonce_l, mac_l)
        elif words[0] == auth.AUTH and len(words) == 2 and self._handshake is not None:
            dialler, nonce_d, nonce_l = self._handshake
            self._handshake = None
            expected = auth.mac(self.factory.secret, b"dialler", dialler, own, nonce_d, nonce_l)
            if auth.verify(expected, words[1]):
                self._become_peer(dialler)
                return auth.OK + b"\n"
        log.warn("{who} peer handshake refused: {line}", who=self.who, line=logs.loggable(words[0]))
        return b"? " + line + b"\n"

    def _become_peer(self, name: bytes) -> None:
        self.setTimeout(None)  # peer links may be quiet for long ...
        detect_dead_peer(self.transport)  # ... but not dead for long
        self.peer_name = name
        self.max_line = PEER_MAX_LINE
        self.who = f"{self.who} ({name.decode()})"
        self.node.links.add(name, self, "accepted")


class NodeConnectionFactory(Factory):
    """Builds :class:`NodeConnection` and keeps what they share."""

    protocol = NodeConnection  # type: ignore[assignment]
    noisy = False

    def __init__(self, node: Node, own_name: bytes, secret: bytes, max_line: int,
                 max_future_ns: int, clock_ns: Callable[[], int], limits: Limits | None = None,
                 peer_tls: PeerTls | None = None):
        self.node = node
        self.limits = limits or Limits()
        self.tls = peer_tls
        self.own_name = own_name
        self.secret = secret
        self.max_line = max_line
        self.max_future_ns = max_future_ns
        self.clock_ns = clock_ns
        self.connections: set[NodeConnection] = set()

    def buildProtocol(self, addr: Any) -> NodeConnection | None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            log.warn("{host}:{port} refused: {n} connections open (max_connections)",
                     host=getattr(addr, "host", "?"), port=getattr(addr, "port", "?"),
                     n=len(self.connections))
            return None
        return super().buildProtocol(addr)  # type: ignore[return-value]


@dataclass(frozen=True)
class Limits:
    max_connections: int = 10000
    idle_timeout: float = 300.0  # 0: none
    max_outstanding: int = 1000
