"""Dialling a peer: a ClientService per configured neighbour keeps one
connection up, and :class:`DialledPeer` runs the dialling end of the
handshake (docs/PEER-PROTOCOL.md, "Handshake")."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from herd import logs
from herd.peer.connection import (
    HANDSHAKE_TIMEOUT,
    PEER_MAX_LINE,
    PeerLineProtocol,
    PeerMessageHandler,
    detect_dead_peer,
    handshake_backoff,
)
from herd.tcp import set_no_delay
from herd.wire import handshake

log = Logger(namespace="herd")

# Jittered exponential backoff for dialling a peer that is down: 0.1 s
# doubling to 0.5 s, plus up to a quarter second of jitter, retried forever;
# with the short connect timeout, a fresh SYN goes out at most about 1.75 s
# apart, so a link cut by a partition comes back soon after it heals.
PEER_RETRY = backoffPolicy(initialDelay=0.1, maxDelay=0.5, factor=2.0,
                           jitter=lambda: random.random() * 0.25)
CONNECT_TIMEOUT = 1.0  # seconds for TCP to connect (one SYN: a retransmitted one would wait 1 s more)


class DialledPeer(PeerLineProtocol):
    """The connection a node dials to one of its peers.

    Back-off for handshakes: a connection that closes before the peer
    accepted us (wrong secret, TLS refused, no answer within
    HANDSHAKE_TIMEOUT) counts as a failure, and the next connection waits
    0.25 s x 2^failures (at most REFUSED_HOLD_MAX) before it starts the
    handshake. ClientService's own back-off cannot do this: it counts any TCP
    connection as a success (and failing its prepareConnection instead trips
    a Twisted state-machine error when the connection then closes).
    """

    max_line = PEER_MAX_LINE

    def __init__(self, node: PeerMessageHandler, own: bytes, peer: bytes, secrets: tuple[bytes, ...],
                 clock: IReactorTime, failures: list[int], tls_options: Any = None):
        self.node = node
        self._tls_options = tls_options
        self._own = own
        self._peer = peer
        self._secrets = secrets
        self._nonce = handshake.new_nonce()
        self._failures = failures  # consecutive failed handshakes, shared by one peer's dialler
        self._clock = clock
        self._timer: Any = None
        self.peer_name = None
        self.who = f"peer {peer.decode()} (dialled)"

    def connectionMade(self) -> None:
        logs.connection(self.who, "connection opened")
        set_no_delay(self.transport)  # flooded updates leave at once
        detect_dead_peer(self.transport)
        wait = handshake_backoff(self._failures[0])
        if wait:
            self._timer = self._clock.callLater(wait, self._start_handshake)
        else:
            self._start_handshake()

    def _start_handshake(self) -> None:
        self._timer = self._clock.callLater(HANDSHAKE_TIMEOUT, self._no_answer)
        if self._tls_options is not None:
            self.send_line(handshake.STARTTLS)  # logged like every line sent, handshake included
        else:
            self._hello()

    def _hello(self) -> None:
        hello = (handshake.HELLO, self._own, self._peer, self._nonce, handshake.PROTOCOL)
        self.send_line(b" ".join(hello))

    _closed_because: str | None = None  # why this end closed it before HERD-OK

    def connectionLost(self, reason: Any = None) -> None:
        self.connected = 0  # Twisted leaves it 1; peers' code asks whether a connection is open
        why = self._closed_because or (reason.getErrorMessage() if reason else "")
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self.peer_name is not None:
            self.node.links.remove(self.peer_name, self)
        else:
            self._failures[0] += 1
            log.warn("{who} handshake did not complete ({why}); retrying in {wait:g}s", who=self.who,
                     why=why, wait=handshake_backoff(self._failures[0]))
        logs.connection(self.who, f"connection closed ({why})")

    def line_received(self, line: bytes) -> None:
        if self.peer_name is not None:
            self.peer_line(line)
            return
        logs.wire(self.who, "recv", line)
        words = line.split()
        if words == [handshake.TLS_OK] and self._tls_options is not None and not self._in_tls:
            self._in_tls = True
            self.transport.startTLS(self._tls_options)
            logs.connection(self.who, "peer link upgraded to TLS")
            self._hello()
            return
        if words[:1] == [handshake.CHALLENGE] and len(words) in (3, 4):
            if not self._answer_challenge(words):
                self._refuse(line, "the peer's challenge proves another secret than this node's "
                                   "(the two nodes' secrets differ)")
            return
        if words == [handshake.OK] and self._sent_auth:
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._failures[0] = 0
            self.peer_name = self._peer
            self.node.links.add(self._peer, self, "dialled, TLS" if self._in_tls else "dialled")
            return
        self._refuse(line)

    _sent_auth = False
    _in_tls = False

    def _answer_challenge(self, words: list[bytes]) -> bool:
        """Answer with the secret (of ours) behind one of the listener's MACs."""
        nonce_l, macs = words[1], words[2:]
        secret = handshake.secret_behind(self._secrets, macs, b"listener", self._own, self._peer,
                                         self._nonce, nonce_l)
        if secret is None:
            return False
        mac_d = handshake.mac(secret, b"dialler", self._own, self._peer, self._nonce, nonce_l)
        self.send_line(b"%s %s" % (handshake.AUTH, mac_d))
        self._sent_auth = True
        return True

    def _refuse(self, line: bytes, why: str = "not a herd peer, not linked to this node, or another peer "
                                              "protocol (the other node's log says which)") -> None:
        shown = logs.loggable(line[:80])
        log.warn("{who} handshake failed at '{line}'; {why}", who=self.who, line=shown, why=why)
        self._close_handshake(f"refused at '{shown}'")

    def _no_answer(self) -> None:
        log.warn("{who} handshake: no answer within {s:g} s (the node stopped or overloaded, or this "
                 "is not its peer port); closing", who=self.who, s=HANDSHAKE_TIMEOUT)
        self._close_handshake(f"no answer within {HANDSHAKE_TIMEOUT:g} s")

    def _close_handshake(self, why: str) -> None:
        self._closed_because = why
        self.stop_reading()
        self.transport.loseConnection()  # connectionLost counts the failure

    def line_too_long(self) -> None:
        log.warn("{who} sent an over-long line; closing", who=self.who)
        self.close()


class _DialledPeerFactory(Factory):
    noisy = False

    def __init__(self, build: Callable[[], DialledPeer]):
        self._build = build

    def buildProtocol(self, addr: Any) -> DialledPeer:
        return self._build()


def dial_service(reactor: Any, node: PeerMessageHandler, own: bytes, peer: bytes, host: str, port: int,
                 secrets: tuple[bytes, ...], tls_options: Any = None) -> ClientService:
    """A ClientService that keeps a connection to ``peer`` up, redialling with
    jittered exponential backoff forever; a refused handshake backs off inside
    DialledPeer (see there)."""
    endpoint = HostnameEndpoint(reactor, host, port, timeout=CONNECT_TIMEOUT)
    failures = [0]
    factory = _DialledPeerFactory(
        lambda: DialledPeer(node, own, peer, secrets, reactor, failures, tls_options))
    return ClientService(endpoint, factory, retryPolicy=PEER_RETRY)
