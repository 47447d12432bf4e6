"""What both ends of an authenticated peer connection share: sending and
receiving peer lines, the line limit, and TCP keepalive. The handshake is
done by each end (herd.peer.accepted for accepted ones, herd.peer.dial for
dialled ones); what a peer line means is the node's (herd.node).
"""

from __future__ import annotations

import socket
import sys
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer, IReactorTime
from zope.interface import implementer

from herd import logs
from herd.peer.links import PeerConnection, PeerLinks
from herd.wire import peer as msg
from herd.wire.lines import LineProtocol

PEER_MAX_LINE = 1 << 20  # authenticated peers may send long control lines
HANDSHAKE_TIMEOUT = 5.0  # seconds a dialled peer has to complete the handshake
REFUSED_HOLD_MAX = 30.0  # longest back-off after failed handshakes


def handshake_backoff(failures: int) -> float:
    """Seconds to wait before a handshake after ``failures`` consecutive ones failed."""
    return 0.0 if failures == 0 else min(REFUSED_HOLD_MAX, 0.25 * 2 ** min(failures, 16))


class PeerMessageHandler(Protocol):
    """What a peer connection needs of its node: the link registry and a
    handler for every line from an authenticated peer."""

    links: PeerLinks
    clock: IReactorTime

    def handle_peer_lines(self, lines: list[bytes], peer: bytes, conn: PeerConnection) -> None: ...


@implementer(IPushProducer)
class _Drain:
    """Registered with a peer connection's transport while a SYNC answer is
    written on it: the transport pauses it while what was written fills its
    buffer (the peer reads slowly), so the answer waits instead of queueing a
    whole transfer in memory."""

    def __init__(self) -> None:
        self.paused = False
        self._waiters: list[Deferred[None]] = []

    def wait(self) -> Deferred[None]:
        """Fires once the transport takes more (at once unless paused)."""
        if not self.paused:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def pauseProducing(self) -> None:  # noqa: N802 (Twisted's name)
        self.paused = True

    def resumeProducing(self) -> None:  # noqa: N802
        self.paused = False
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def stopProducing(self) -> None:  # noqa: N802 (the connection is gone: nothing waits)
        self.resumeProducing()


class PeerLineProtocol(LineProtocol):
    """What both ends of an authenticated peer connection do."""

    node: PeerMessageHandler
    peer_name: bytes | None
    transport: Any
    connected: int
    who: str

    lines_in = 0  # lines received since the peer authenticated
    lines_out = 0  # lines sent on this connection
    # Heartbeat bookkeeping (herd.peer.links.PeerLinks.beat): the counters at
    # the last beat, and for how many beats each has not moved.
    beat_in = beat_out = quiet_in = quiet_out = 0

    _out: list[bytes] | None = None  # lines to write at the end of this reactor turn
    _drain: _Drain | None = None  # registered while a SYNC answer is written (writable)
    _received: list[bytes] | None = None  # peer lines of the current read, for the access log

    def send_line(self, line: bytes) -> None:
        """Send ``line``. Once authenticated, the lines sent in one reactor turn
        go out together, in order, in one write at the end of the turn (a
        turn floods a whole batch of updates; each write costs the reactor a
        few microseconds); handshake lines go at once (TLS may start next)."""
        if self.peer_name is None:
            self.lines_out += 1
            logs.wire(self.who, "sent", line)
            self.transport.write(line + b"\n")
        else:
            self.send_lines([line])

    def send_lines(self, lines: list[bytes]) -> None:
        """send_line for each of ``lines``, on an authenticated connection."""
        assert self.peer_name is not None
        self.lines_out += len(lines)
        if self._out is None:
            self._out = lines[:]
            self.node.clock.callLater(0, self.flush_lines)
        else:
            self._out.extend(lines)

    def flush_lines(self) -> None:
        """Write the lines sent so far in this turn (before closing, say)."""
        out, self._out = self._out, None
        if out:
            out.append(b"")
            data = b"\n".join(out)
            if msg.HEARTBEAT in out:  # heartbeats stay out of the access log
                logs.wire_block(self.who, "sent", b"".join([line + b"\n" for line in out[:-1]
                                                            if line != msg.HEARTBEAT]))
            else:
                logs.wire_block(self.who, "sent", data)
            self.transport.write(data)

    closing = False  # close() was called: nothing more is sent

    def writable(self) -> Deferred[None]:
        """Fires once the transport takes more: at once, unless what was
        written fills its buffer; then once the peer has read enough of it.
        Until :meth:`end_writable`, a producer is registered with the transport."""
        if self.closing or not self.connected:
            return succeed(None)
        if self._drain is None:
            self._drain = _Drain()
            self.transport.registerProducer(self._drain, True)
        return self._drain.wait()

    def end_writable(self) -> None:
        """Unregister what :meth:`writable` registered (before a close: a
        transport whose producer is paused waits for it instead of closing)."""
        if self._drain is not None:
            drain, self._drain = self._drain, None
            if self.connected:  # (a lost TLS transport cannot unregister: it has let go of its protocol)
                self.transport.unregisterProducer()
            drain.resumeProducing()

    def close(self) -> None:
        """Close once what was sent is written; nothing more is sent or read:
        the links choose other connections for it at once (a TLS transport
        drops what is written after its close), and an answer under way stops
        (see herd.peer.reconcile)."""
        self.closing = True
        self.stop_reading()  # what it still brings is not acted on (the peer pulls again elsewhere)
        if self.peer_name is not None:
            self.node.links.remove(self.peer_name, self)
        self.flush_lines()
        self.end_writable()
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        """The peer lines of a read go to the node together (consecutive
        updates are stored as one group), and into the access log together."""
        super().dataReceived(data)
        if self._received:
            received, self._received = self._received, None
            logs.wire_block(self.who, "recv", b"\n".join(received) + b"\n")
            if not self.closing:  # (a closing connection has left the links: see close)
                self.node.handle_peer_lines(received, self.peer_name, self)  # type: ignore[arg-type]

    def lines_received(self, lines: list[bytes]) -> None:
        """Once authenticated, a read's lines are taken together (see
        dataReceived); before that, one by one (the handshake)."""
        if self.peer_name is None:
            super().lines_received(lines)
            return
        self.lines_in += len(lines)
        if msg.HEARTBEAT in lines:  # (they counted as lines received: that is all they are for)
            lines = [line for line in lines if line != msg.HEARTBEAT]
        if self._received is None:
            self._received = lines
        else:
            self._received.extend(lines)

    def peer_line(self, line: bytes) -> None:
        """A line of the read that authenticated the connection, after it."""
        assert self.peer_name is not None
        self.lines_received([line])



# A peer whose host died (power loss, a cable) sends no FIN: without these its
# connections stay open here, a pull on them waits forever, and its next
# process's link-up finds them still counted. Keepalive probes after 10 s of
# silence, every 5 s; TCP_USER_TIMEOUT closes the connection once nothing has
# been acknowledged for 25 s (probes included, so about 25 s after the last
# packet on a quiet link; also a peer that has not read for 25 s, its window
# shut: a node pauses reading from peers only while its Redis catches up).
PEER_KEEPALIVE = {"TCP_KEEPIDLE": 10, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 3, "TCP_USER_TIMEOUT": 25_000}
# TCP doubles its retransmission timeout after each loss (0.2, 0.4, 0.8, 1.6 s
# ...), so data lost in a cut of about two seconds was resent up to 1.6 s
# after the cut healed, and a link often hit its 3 s heartbeat timeout and
# redialled first (herd lab: such cuts took 1-1.5 s to heal, longer ones
# 0.1-0.8 s). Linux >= 6.15 lets a socket cap it (TCP_RTO_MAX_MS, at least
# 1000): then lost data is resent within a second of the heal. Older kernels
# refuse the option; nothing changes there.
TCP_RTO_MAX_MS = 44  # include/uapi/linux/tcp.h (Python's socket module has no name for it yet)
PEER_RTO_MAX_MS = 1000


def detect_dead_peer(transport: Any) -> None:
    """Turn on TCP keepalive (and the user timeout) on a peer connection's
    socket, and cap its retransmission timeout at a second where the kernel
    can; options this platform lacks are skipped."""
    try:
        sock = transport.getHandle()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    except (AttributeError, OSError):  # not a TCP socket (tests, a wrapped transport)
        return
    for name, value in PEER_KEEPALIVE.items():
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
    if sys.platform == "linux":
        try:
            sock.setsockopt(socket.IPPROTO_TCP, TCP_RTO_MAX_MS, PEER_RTO_MAX_MS)
        except OSError:  # a kernel before 6.15
            pass
