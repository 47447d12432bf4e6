"""What an authenticated peer's bad or repeated messages must not do (found by
a black-box audit of the peer protocol): move offsets with positions no log
has, end a pull from another connection, queue a full dump per repeated SYNC,
or leave updates that were in flight on a lost connection for the next one."""

from __future__ import annotations

import socket
from typing import Any, cast

import pytest
from fakes import PeerConn as Conn
from harness import redis_with_store, store_settled
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest

from herd.node import CLIENT, STORE_AGAIN_AFTER, Node, Origin
from herd.peer.links import PeerLinks
from herd.peer.reconcile import GAP_PULL_INTERVAL, PULL_SILENCE, Reconciler
from herd.wire.client import parse_at_line
from herd.wire.peer import Position


@pytest.mark.parametrize("token, position", [
    (b"E/1-0", Position(b"E", b"1-0")),
    (b"1796031718.775468/1796031724054-12", Position(b"1796031718.775468", b"1796031724054-12")),
    (b"E/*", None),  # the node's own "anywhere" sentinel
    (b"E/garbage", None),
    (b"E/1-", None),
    (b"E/-1-0", None),
    (b"E/123456789012345678901-0", None),
    (b"/1-0", None),
    (b"E", None),
    (b"-", None),
])
def test_positions_from_the_wire_are_stream_ids(token: bytes, position: Position | None) -> None:
    assert Position.parse(token) == position


class Reconciling(unittest.TestCase):
    def setUp(self) -> None:
        self.redis, self.store = redis_with_store(self, "herd-robust-")
        self.clock = Clock()
        self.links = PeerLinks([b"P"])
        self.reconciler = Reconciler(self.store, self.links, self.clock)
        self.a, self.b = Conn(), Conn()

    def offset(self) -> dict[bytes, bytes]:
        return self.redis.hgetall("herd:peer:P")

    @inlineCallbacks
    def test_sync_end_counts_only_on_the_connection_the_pull_went_on(self) -> Any:
        self.links.add(b"P", self.a, "test")  # link up: a pull on a
        yield store_settled(self.store)
        assert [line for line in self.a.take() if line.startswith(b"SYNC")] == [b"SYNC - ALL"]
        self.links.add(b"P", self.b, "test")
        self.reconciler.sync_end(b"P", self.b, b"E/5-0")
        yield store_settled(self.store)
        assert self.offset() == {} and self.reconciler.is_pulling(b"P")
        self.reconciler.sync_end(b"P", self.a, b"E/5-0")
        yield store_settled(self.store)
        assert self.offset() == {b"epoch": b"E", b"pos": b"5-0"}

    @inlineCallbacks
    def test_one_sync_answer_at_a_time_per_connection(self) -> Any:
        self.links.add(b"P", self.a, "test")
        first = self.reconciler.serve(b"P", self.a, b"-")
        assert first is not None
        assert self.reconciler.serve(b"P", self.a, b"-") is None  # while the first is answered
        yield first
        assert len([line for line in self.a.take() if line.startswith(b"SYNC-END ")]) == 1  # one answer
        again = self.reconciler.serve(b"P", self.a, b"-")  # the next SYNC, once it ended
        assert again is not None
        yield again
        assert len([line for line in self.a.take() if line.startswith(b"SYNC-END ")]) == 1

    @inlineCallbacks
    def test_a_pull_that_hears_nothing_is_given_up_and_its_connection_closed(self) -> Any:
        closed: list[bool] = []
        self.a.transport = type("Transport", (), {"abortConnection": lambda _: closed.append(True)})()
        self.links.add(b"P", self.a, "test")
        yield store_settled(self.store)
        assert [line for line in self.a.take() if line.startswith(b"SYNC")] == [b"SYNC - ALL"]
        self.a.lines_in += 3  # records of the answer arrive: still pulling
        self.clock.advance(PULL_SILENCE)
        assert not closed and self.reconciler.is_pulling(b"P")
        self.clock.advance(PULL_SILENCE)  # then nothing for a whole interval
        assert closed == [True] and not self.reconciler.is_pulling(b"P")

    @inlineCallbacks
    def test_a_connection_lost_while_its_pull_reads_the_offset_gets_no_sync(self) -> Any:
        """Found re-running the audit: the SYNC still went on the lost connection,
        its silence timer then ended the next pull's watch (KeyError), and a
        silent connection held the pull for good."""
        closed: list[bool] = []
        self.b.transport = type("Transport", (), {"abortConnection": lambda _: closed.append(True)})()
        self.links.add(b"P", self.a, "test")  # a pull: its offset read is in flight
        self.links.add(b"P", self.b, "test")
        self.links.remove(b"P", self.a)  # ... when a goes: the pull moves to b
        yield store_settled(self.store)
        assert [line for line in self.a.take() if line.startswith(b"SYNC")] == []
        assert [line for line in self.b.take() if line.startswith(b"SYNC")] == [b"SYNC - ALL"]
        self.clock.advance(PULL_SILENCE)  # b says nothing
        assert closed == [True] and not self.reconciler.is_pulling(b"P")

    @inlineCallbacks
    def test_losing_one_of_two_connections_pulls_on_the_other(self) -> Any:
        self.links.add(b"P", self.a, "test")
        yield store_settled(self.store)
        self.reconciler.sync_end(b"P", self.a, b"E/5-0")
        yield store_settled(self.store)
        self.links.add(b"P", self.b, "test")
        self.links.remove(b"P", self.a)  # updates in flight on a: gone with it
        assert self.b.take() == [b"PULL"]  # the peer may not have seen a go: it pulls too
        self.clock.advance(GAP_PULL_INTERVAL)
        yield store_settled(self.store)
        assert self.b.take() == [b"SYNC E/5-0"]


class PeerLines(unittest.TestCase):
    def setUp(self) -> None:
        self.redis, self.store = redis_with_store(self, "herd-robust-node-")
        self.links = PeerLinks([b"P"])
        self.node = Node(b"A", self.store, None, self.links, Clock())  # type: ignore[arg-type]
        self.conn = Conn()

    @inlineCallbacks
    def test_forwarded_updates_not_stored_are_tried_again_after_a_stall_with_no_failure(self) -> Any:
        # Found by a review: a retry that came while Redis was stalled (not
        # serving, nothing failed) returned for good: only a failure leads to
        # the on_connected call that retries.
        while not self.store.serving:  # its first on_connected calls have run
            yield deferLater(reactor, 0.01, lambda: None)
        clock = Clock()
        node = Node(b"A", self.store, None, self.links, clock)  # type: ignore[arg-type]
        record = parse_at_line(b"AT P +0.000000001 again +1+1 1700000000")
        assert record is not None
        node._unstored.append((record, Origin(b"P", True), frozenset()))
        self.store._serving_now = False  # as during a stall: no failure, no on_connected to come
        node._store_again()
        assert self.redis.hgetall("herd:client:again") == {}
        self.store._serving_now = True
        clock.advance(STORE_AGAIN_AFTER)
        yield store_settled(self.store)
        assert self.redis.hgetall("herd:client:again")[b"at"] == record.line

    @inlineCallbacks
    def test_a_record_far_ahead_of_this_nodes_clock_is_refused(self) -> Any:
        now = [1_700_000_000 * 10**9]
        clock = Clock()
        node = Node(b"A", self.store, None, self.links, clock,  # type: ignore[arg-type]
                    max_future_ns=3600 * 10**9, clock_ns=lambda: now[0])

        def send(client: bytes, seconds_ahead: int) -> bytes:
            line = b"R AT P +0.000000001 %s +1+1 %d" % (client, 1_700_000_000 + seconds_ahead)
            node.handle_peer_lines([line], b"P", self.conn)  # type: ignore[arg-type]
            return line

        def pulls() -> Any:
            clock.advance(GAP_PULL_INTERVAL)
            yield store_settled(self.store)
            return [line for line in self.conn.take() if line.startswith(b"SYNC")]

        send(b"soon", 3600 + 300)  # within the bound and the hosts' clock slack
        send(b"pinned", 10**9)  # decades ahead: refused for good, no pull for it
        assert (yield from pulls()) == []
        assert self.redis.hgetall("herd:client:soon") != {}
        assert self.redis.hgetall("herd:client:pinned") == {}
        send(b"late", 3600 + 301)  # this node's clock may be the one behind: lost, pulled again
        assert (yield from pulls()) == [b"SYNC - ALL"]  # (ALL: its first pull since start)
        assert self.redis.hgetall("herd:client:late") == {}
        now[0] += 2 * 10**9  # the clock caught up; the pull's answer brings the record again
        send(b"late", 3600 + 301)
        yield store_settled(self.store)
        assert self.redis.hgetall("herd:client:late") != {}

    @inlineCallbacks
    def test_no_step_of_a_peers_log_is_taken_while_this_node_may_lack_one_of_its_updates(self) -> Any:
        """Protocol 4: K lines list nothing, so after losing an update that
        went between P and this node as F, the node takes no U or K step of
        P's log until a pull that began after the loss completes."""
        yield self.pulled_from_p()
        update = b"U E/6-0 E/7-0 AT P +0.000000001 u +1+1 1700000000"
        self.node.handle_peer_lines([b"K E/5-0 E/6-0"], b"P", self.conn)  # type: ignore[arg-type]
        yield store_settled(self.store)
        assert self.redis.hgetall("herd:peer:P") == {b"epoch": b"E", b"pos": b"6-0"}
        self.node.reconciler.pull(b"P", self.conn)  # type: ignore[arg-type]
        yield store_settled(self.store)
        # During that pull, this node's own update forwarded to P is not stored here.
        record = parse_at_line(b"AT A +0.000000001 mine +1+1 1700000000")
        self.node._forwarded_lost(None, record, CLIENT, frozenset({b"P"}))  # type: ignore[arg-type]
        self.node.handle_peer_lines([update], b"P", self.conn)  # type: ignore[arg-type]
        yield store_settled(self.store)
        assert self.redis.hgetall("herd:client:u") != {}  # stored, but its step not taken
        assert self.redis.hgetall("herd:peer:P") == {b"epoch": b"E", b"pos": b"6-0"}
        self.node.reconciler.sync_end(b"P", self.conn, b"E/6-0")  # type: ignore[arg-type]
        yield store_settled(self.store)
        self.node.handle_peer_lines([b"K E/6-0 E/7-0"], b"P", self.conn)  # type: ignore[arg-type]
        yield store_settled(self.store)
        assert self.redis.hgetall("herd:peer:P") == {b"epoch": b"E", b"pos": b"6-0"}  # that pull began before
        assert self.node.reconciler.lacks(b"P")
        yield self.pulled_from_p(b"E/6-0")
        assert not self.node.reconciler.lacks(b"P")
        self.node.handle_peer_lines([b"K E/6-0 E/7-0"], b"P", self.conn)  # type: ignore[arg-type]
        yield store_settled(self.store)
        assert self.redis.hgetall("herd:peer:P") == {b"epoch": b"E", b"pos": b"7-0"}

    @inlineCallbacks
    def test_a_k_or_u_line_with_positions_no_log_has_moves_no_offset(self) -> Any:
        yield self.store.set_peer_offset(b"P", Position(b"E", b"5-0"))
        record = parse_at_line(b"AT P +0.000000001 c +1+1 1700000000")
        assert record is not None
        for line in (b"K E/* E/garbage", b"K E/5-0 E/garbage", b"K E/* E/99-0",
                     b"U E/* E/6-0 " + record.line, b"U E/5-0 E/x " + record.line):
            self.node.handle_peer_lines([line], b"P", self.conn)  # type: ignore[arg-type]
        yield store_settled(self.store)
        assert self.redis.hgetall("herd:peer:P") == {b"epoch": b"E", b"pos": b"5-0"}


    @inlineCallbacks
    def pulled_from_p(self, at: bytes = b"E/5-0") -> Any:
        """Redis serves (so the node may lack updates of every peer's log, until
        it pulls), then a pull from P completes with the offset at ``at``."""
        while not self.store.serving:
            yield deferLater(reactor, 0.01, lambda: None)
        self.node.reconciler.pull(b"P", self.conn)  # type: ignore[arg-type]
        yield store_settled(self.store)
        self.node.reconciler.sync_end(b"P", self.conn, at)  # type: ignore[arg-type]
        yield store_settled(self.store)
        self.conn.take()

    @inlineCallbacks
    def test_the_f_lines_of_one_read_are_one_group_in_order_with_the_other_lines(self) -> Any:
        """Consecutive F lines of a read are stored as one group; a malformed one
        is left out (and logged), and a line of another kind between them is
        handled after the F lines before it and before those after it."""
        yield self.pulled_from_p()
        lines = [b"F AT P +0.000000001 g%d +1+1 1700000000.%d" % (i, i) for i in range(20)]
        lines[5] = b"F AT P +0.000000001 broken"
        lines[10] = b"K E/5-0 E/6-0"
        lines[15] = b"F AT P +0.000000001 g3 +1+1 1700000000.2"  # older than g3's: not stored
        self.node.handle_peer_lines(lines, b"P", self.conn)  # type: ignore[arg-type]
        assert self.store.backlog == 19  # 18 records in two groups, and the K line's offset step
        yield store_settled(self.store)
        assert self.redis.hgetall("herd:peer:P") == {b"epoch": b"E", b"pos": b"6-0"}
        stored = {i for i in range(20) if self.redis.hgetall(b"herd:client:g%d" % i)}
        assert stored == set(range(20)) - {5, 10, 15}
        assert self.redis.hgetall("herd:client:g3")[b"time"] == b"1700000000.3"
        assert self.node.stats.flood_in == 17 and self.node.stats.flood_duplicate == 1


class SocketTransport:
    """What detect_dead_peer asks of a transport: its socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def getHandle(self) -> socket.socket:  # noqa: N802 (Twisted's name)
        return self.sock


def test_peer_sockets_notice_a_dead_host() -> None:
    """detect_dead_peer: keepalive every 5 s after 10 s of silence, 3 probes,
    and 25 s for unacknowledged data, on a real TCP socket."""
    from herd.peer.connection import detect_dead_peer

    with socket.create_server(("127.0.0.1", 0)) as server, \
            socket.create_connection(server.getsockname()) as sock:
        detect_dead_peer(SocketTransport(sock))
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        if hasattr(socket, "TCP_KEEPIDLE"):  # Linux
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 5
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 25_000
    detect_dead_peer(object())  # no socket: nothing to do, no error


def test_peer_sockets_resend_lost_data_within_a_second_where_the_kernel_can() -> None:
    """Lab finding 2: TCP's retransmission timeout is capped at 1 s on peer
    sockets (Linux >= 6.15), so data lost in a cut shorter than the heartbeat
    timeout is resent within a second of the heal."""
    import sys

    from herd.peer.connection import PEER_RTO_MAX_MS, TCP_RTO_MAX_MS, detect_dead_peer

    with socket.create_server(("127.0.0.1", 0)) as server, \
            socket.create_connection(server.getsockname()) as sock:
        try:
            default = sock.getsockopt(socket.IPPROTO_TCP, TCP_RTO_MAX_MS)
        except OSError:
            pytest.skip("this kernel cannot cap TCP's retransmission timeout (Linux >= 6.15 can)")
        assert sys.platform == "linux" and default == 120_000  # TCP_RTO_MAX
        detect_dead_peer(SocketTransport(sock))
        assert sock.getsockopt(socket.IPPROTO_TCP, TCP_RTO_MAX_MS) == PEER_RTO_MAX_MS == 1000


def test_a_closed_peer_connection_says_it_is_not_connected() -> None:
    """Twisted leaves Protocol.connected at 1 after connectionLost; the checks
    on peer connections (a pull's, a SYNC answer's) need it to be 0."""
    from twisted.internet.error import ConnectionDone
    from twisted.internet.testing import StringTransport
    from twisted.python.failure import Failure

    from config.schema import RedisAddress
    from herd.peer.accepted import AcceptedPeer, AcceptedPeerFactory
    from herd.peer.dial import DialledPeer
    from storage.store import RedisStore

    store = RedisStore(Clock(), RedisAddress("redis://127.0.0.1:1/0", "127.0.0.1", 1), b"herd:", 1.0)
    node = Node(b"A", store, None, PeerLinks([b"P"]), Clock())  # type: ignore[arg-type]  # never started
    dialled = DialledPeer(node, b"A", b"P", (b"secret",), Clock(), [0])
    accepted = AcceptedPeerFactory(node, b"A", (b"secret",)).buildProtocol(None)
    assert isinstance(accepted, AcceptedPeer)
    for conn in (dialled, accepted):
        conn.makeConnection(StringTransport())
        assert conn.connected == 1
        conn.connectionLost(Failure(ConnectionDone()))
        assert conn.connected == 0


@pytest.mark.parametrize("stage", ["challenged", "tls"])
def test_a_handshake_this_node_timed_out_is_logged_once_with_its_stage(stage: str) -> None:
    """Found by reviews: the listener's own timeout was logged, and then the
    close it made as "abandoned after this node's challenge (... a different
    secret?)" or "peer refused or gone during TLS"."""
    from twisted.internet.error import ConnectionAborted
    from twisted.internet.testing import StringTransport
    from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
    from twisted.python.failure import Failure

    from config.schema import RedisAddress
    from herd.peer.accepted import PRE_AUTH_TIMEOUT, AcceptedPeer, AcceptedPeerFactory
    from herd.wire import handshake
    from storage.store import RedisStore

    clock = Clock()
    store = RedisStore(clock, RedisAddress("redis://127.0.0.1:1/0", "127.0.0.1", 1), b"herd:", 1.0)
    node = Node(b"A", store, None, PeerLinks([b"P"]), clock)  # type: ignore[arg-type]  # never started
    accepted = AcceptedPeerFactory(node, b"A", (b"secret",)).buildProtocol(None)
    assert isinstance(accepted, AcceptedPeer)
    accepted.callLater = clock.callLater  # type: ignore[assignment]  # the timeout on this clock
    seen: list[dict[str, Any]] = []
    observer = cast(ILogObserver, seen.append)
    globalLogPublisher.addObserver(observer)
    try:
        transport = StringTransport()
        accepted.makeConnection(transport)
        if stage == "tls":
            accepted._tls = True  # as after HERD-STARTTLS (a StringTransport cannot start TLS)
        else:
            accepted.dataReceived(b"HERD-HELLO P A %s %s\n" % (handshake.new_nonce(), handshake.PROTOCOL))
            assert transport.value().startswith(handshake.CHALLENGE)
        clock.advance(PRE_AUTH_TIMEOUT)
        assert transport.disconnecting
        accepted.connectionLost(Failure(ConnectionAborted()))
    finally:
        globalLogPublisher.removeObserver(observer)
    said = [formatEvent(event) for event in seen]
    warned = [line for line in said if line.startswith("peer port")]
    expected = {"challenged": "it claimed to be P, and did not answer this node's challenge",
                "tls": "it asked for TLS and said nothing in it"}[stage]
    assert len(warned) == 1, said
    assert "did not authenticate within 40 s" in warned[0] and expected in warned[0], said
