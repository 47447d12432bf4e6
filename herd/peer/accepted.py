"""The listening end of peer links: connections accepted on the node's peer
port (``peer_port``), never on its client port (SPEC section 2).

A connection here must authenticate first (docs/PEER-PROTOCOL.md,
"Handshake": optional HERD-STARTTLS, then HERD-HELLO / HERD-AUTH). Until it
has, every other line is answered ``? <line>`` and changes nothing, and it is
closed if it has not authenticated within PRE_AUTH_TIMEOUT. The peer port
serves no client request.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from herd import logs
from herd.peer.connection import (
    HANDSHAKE_TIMEOUT,
    PEER_MAX_LINE,
    REFUSED_HOLD_MAX,
    PeerLineProtocol,
    PeerMessageHandler,
    detect_dead_peer,
)
from herd.peer.tls import PeerTls
from herd.tcp import peer_address, set_no_delay
from herd.wire import handshake
from herd.wire.client import too_long_reply

log = Logger(namespace="herd")

# Before authentication a line may be as long as a client's (max_line_bytes),
# and at least as long as any handshake line (HERD-HELLO names two nodes of up
# to 256 bytes each).
PRE_AUTH_MIN_LINE = 1024
# A dialler whose handshakes failed waits up to REFUSED_HOLD_MAX after
# connecting before it speaks (herd.peer.dial), then has HANDSHAKE_TIMEOUT.
PRE_AUTH_TIMEOUT = REFUSED_HOLD_MAX + 2 * HANDSHAKE_TIMEOUT
# The limit of connections the peer port holds open at once: each neighbour
# dials once, and a reconnecting one may briefly hold a second; strangers
# beyond that are refused before they cost anything.
CONNECTIONS_PER_NEIGHBOUR = 4
SPARE_CONNECTIONS = 16


@implementer(IHalfCloseableProtocol)
class AcceptedPeer(PeerLineProtocol, TimeoutMixin):
    """A connection accepted on the peer port: a stranger until it authenticates."""

    factory: AcceptedPeerFactory

    def __init__(self) -> None:
        self.peer_name = None
        self._handshake: tuple[bytes, bytes, bytes] | None = None  # dialler, nonce_d, nonce_l
        self._tls = False
        self._spoke_in_tls = False  # a line arrived after the TLS upgrade

    def connectionMade(self) -> None:
        self.node = self.factory.node
        # Until it authenticates it is a client connection (SPEC 2): the
        # client port's line limit, and its answer to a longer line.
        self.max_line = self.factory.max_line
        self.who = f"peer port {peer_address(self.transport)}"
        self.factory.connections.add(self)
        set_no_delay(self.transport)  # flooded updates leave at once
        logs.connection(self.who, "connection opened")
        self.setTimeout(PRE_AUTH_TIMEOUT)

    _timed_out = False  # closed by this node's PRE_AUTH_TIMEOUT

    def timeoutConnection(self) -> None:
        claimed = None if self._handshake is None else logs.loggable(self._handshake[0])
        if claimed is not None:
            stage = f" (it claimed to be {claimed}, and did not answer this node's challenge)"
        elif self._tls and not self._spoke_in_tls:
            stage = " (it asked for TLS and said nothing in it)"
        else:
            stage = ""
        log.warn("{who} did not authenticate within {s:g} s{stage}; closing", who=self.who,
                 s=PRE_AUTH_TIMEOUT, stage=stage)
        self._timed_out = True
        self.transport.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.connected = 0  # Twisted leaves it 1; peers' code asks whether a connection is open
        self.setTimeout(None)
        self.factory.connections.discard(self)
        why = reason.getErrorMessage() if reason else ""
        if self.peer_name is not None:
            self.node.links.remove(self.peer_name, self)
        elif self._handshake is not None and not self._timed_out:
            # A dialler with another secret closes on reading the challenge; so
            # does one that gave up waiting for it (this node was stopped or slow).
            self.factory.refused("{who} peer handshake abandoned after this node's challenge (claimed to be "
                                 "{name}; a different secret, or it gave up waiting for this node)",
                                 who=self.who, name=logs.loggable(self._handshake[0]))
        elif self._tls and not self._spoke_in_tls and not self._timed_out:  # TLS refused it, or it left
            self.factory.refused("{who} peer refused or gone during TLS ({why})", who=self.who, why=why)
        logs.connection(self.who, f"connection closed ({why})")

    def readConnectionLost(self) -> None:  # noqa: N802 (Twisted's name)
        """The other end half-closed (plain TCP: a TLS transport does not tell
        its protocol): a stranger's unterminated last line is a line, answered
        before the close, as on the client port (SPEC 1, 2); a peer's link
        closes as any other (the links choose other connections at once)."""
        if self.peer_name is not None:
            self.close()
            return
        self.flush_partial_line()
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:  # noqa: N802
        pass

    def line_received(self, line: bytes) -> None:
        self._spoke_in_tls = self._tls
        if self.peer_name is not None:
            self.peer_line(line)
            return
        logs.wire(self.who, "recv", line)
        words = line.split()
        if words[:1] == [handshake.STARTTLS] and self.factory.tls is not None and not self._tls:
            self._start_tls()
        elif words:
            self.send_line(self._handshake_step(line, words))

    def line_too_long(self) -> None:
        log.warn("{who} sent a line over {limit} bytes; closing", who=self.who, limit=self.max_line)
        if self.peer_name is None:
            self.send_line(too_long_reply(self.max_line).rstrip(b"\n"))
            self.transport.loseConnection()
        else:
            self.close()

    def _start_tls(self) -> None:
        """Answer HERD-STARTTLS: everything after HERD-TLS-OK is TLS."""
        assert self.factory.tls is not None
        self._tls = True
        logs.wire(self.who, "sent", handshake.TLS_OK)
        self.transport.write(handshake.TLS_OK + b"\n")
        self.transport.startTLS(self.factory.tls.server)
        logs.connection(self.who, "peer link upgraded to TLS")

    def _handshake_step(self, line: bytes, words: list[bytes]) -> bytes:
        """Advance the handshake; returns the line to send back (``? <line>``
        for anything that is not the expected next step)."""
        own, secrets = self.factory.own_name, self.factory.secrets
        if self.factory.tls is not None and not self._tls:
            self.factory.refused("{who} peer handshake refused: TLS is required first", who=self.who)
            return b"? " + line
        if words[0] == handshake.HELLO and len(words) in (4, 5):
            _, dialler, listener, nonce_d, *protocol = words
            if protocol != [handshake.PROTOCOL]:
                self.factory.refused("{who} peer handshake refused: {peer} speaks peer protocol {theirs}, "
                                     "this node {ours}; run the same herd version on every node",
                                     who=self.who, peer=logs.loggable(dialler),
                                     theirs=logs.loggable(protocol[0]) if protocol else "1",
                                     ours=handshake.PROTOCOL.decode())
                return b"? " + line
            why = self._hello_refusal(dialler, listener, nonce_d)
            if why is None:
                nonce_l = handshake.new_nonce()
                self._handshake = (dialler, nonce_d, nonce_l)
                macs = (handshake.mac(secret, b"listener", dialler, own, nonce_d, nonce_l)
                        for secret in secrets)
                return b" ".join((handshake.CHALLENGE, nonce_l, *macs))
        elif words[0] == handshake.AUTH and len(words) == 2 and self._handshake is not None:
            dialler, nonce_d, nonce_l = self._handshake
            self._handshake = None
            if handshake.secret_behind(secrets, words[1:], b"dialler", dialler, own, nonce_d, nonce_l):
                self._become_peer(dialler)
                return handshake.OK
            why = f"{logs.loggable(dialler)}'s proof matches no secret of this node (a different secret?)"
        else:
            why = "not a handshake step expected here"
        self.factory.refused("{who} peer handshake refused at {line}: {why}", who=self.who,
                             line=logs.loggable(words[0][:80]), why=why)
        return b"? " + line

    def _hello_refusal(self, dialler: bytes, listener: bytes, nonce: bytes) -> str | None:
        """Why a HERD-HELLO from ``dialler`` to ``listener`` is refused, or None."""
        own = self.factory.own_name
        if listener != own:
            return f"addressed to {logs.loggable(listener)}, this node is {own.decode()}"
        if not self.node.links.is_neighbour(dialler):
            return f"{logs.loggable(dialler)} is not a neighbour of {own.decode()} in this node's config"
        if not handshake.is_nonce(nonce):
            return "its nonce is not 32 hex digits"
        return None

    def _become_peer(self, name: bytes) -> None:
        self.setTimeout(None)  # peer links may be quiet for long ...
        detect_dead_peer(self.transport)  # ... but not dead for long
        self.peer_name = name
        self.max_line = PEER_MAX_LINE
        self.who = f"peer {name.decode()} (accepted)"
        self.node.links.add(name, self, "accepted, TLS" if self._tls else "accepted")


class AcceptedPeerFactory(Factory):
    """Builds :class:`AcceptedPeer` for the peer port, within its own
    connection limit (client connections never count against it)."""

    protocol = AcceptedPeer  # type: ignore[assignment]
    noisy = False

    def __init__(self, node: PeerMessageHandler, own_name: bytes, secrets: tuple[bytes, ...],
                 peer_tls: PeerTls | None = None, max_line: int = 4096):
        self.node = node
        self.max_line = max(max_line, PRE_AUTH_MIN_LINE)  # before authentication
        self.own_name = own_name
        self.secrets = secrets  # the current one, then the previous one during a rotation
        self.tls = peer_tls
        self.max_connections = CONNECTIONS_PER_NEIGHBOUR * len(node.links.neighbours) + SPARE_CONNECTIONS
        self.connections: set[AcceptedPeer] = set()
        # Anyone who reaches the peer port can make refusals: ten a second are
        # logged at most (fewer as it goes on), the others summed up.
        self._refusals = logs.Throttle(
            node.clock, log.warn, "peer port: {n} more refusal(s) in the last {window} (the last: {last})")

    def stopFactory(self) -> None:  # noqa: N802 (Twisted's name: the port stopped listening)
        self._refusals.close()

    def refused(self, text: str, **fields: Any) -> None:
        """Log a refused connection or handshake step: a warning ``text``
        (a format of ``fields``), throttled."""
        if self._refusals.allow(text.format(**fields)):
            log.warn(text, **fields)

    def buildProtocol(self, addr: Any) -> AcceptedPeer | None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections:
            self.refused("peer port: {host}:{port} refused: {n} connections open",
                         host=getattr(addr, "host", "?"), port=getattr(addr, "port", "?"),
                         n=len(self.connections))
            return None
        return super().buildProtocol(addr)  # type: ignore[return-value]

