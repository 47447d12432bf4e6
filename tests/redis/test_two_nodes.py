"""Two Node objects linked in memory (Twisted's loopback, no processes, no
sockets between them; one real redis-server, a key prefix per node): the
whole peer protocol between them, handshake included (docs/PEER-PROTOCOL.md):
SYNC / SYNC-END when the link comes up, U before a node knows its clients,
F then K once it does, and each offset following the other's log."""

from __future__ import annotations

from typing import Any

from harness import discard_redis, fresh_redis, until
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.protocols.loopback import loopbackAsync
from twisted.trial import unittest

from config.schema import RedisAddress
from herd.node import Node
from herd.peer.accepted import AcceptedPeerFactory
from herd.peer.dial import DialledPeer
from herd.peer.links import PeerLinks
from herd.wire.client import Iamat, parse_request
from herd.wire.peer import split_kind
from storage.store import RedisStore

SECRETS = (b"two-nodes",)


class Recorded(Node):
    """A Node that remembers the kind of every peer message it handles."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kinds: list[bytes] = []

    def handle_peer_lines(self, lines: list[bytes], peer: bytes, conn: Any) -> None:
        self.kinds.extend(split_kind(line)[0] for line in lines)
        super().handle_peer_lines(lines, peer, conn)


class TwoNodes(unittest.TestCase):
    def setUp(self) -> None:
        self.redis = fresh_redis("herd-two-")
        self.addCleanup(discard_redis, self.redis)
        self.nodes: dict[bytes, Recorded] = {}
        for name, peer in ((b"A", b"B"), (b"B", b"A")):
            address = RedisAddress(self.redis.url, "127.0.0.1", self.redis.port)
            store = RedisStore(reactor, address, name + b":", timeout=5.0)
            store.start()
            self.addCleanup(store.stop)
            self.nodes[name] = Recorded(name, store, None, PeerLinks([peer]), reactor,  # type: ignore[arg-type]
                                        max_future_ns=3600 * 10**9)
        self.a, self.b = self.nodes[b"A"], self.nodes[b"B"]
        accepted = AcceptedPeerFactory(self.b, b"B", SECRETS).buildProtocol(None)
        dialled = DialledPeer(self.a, b"A", b"B", SECRETS, reactor, [0])
        self.closed = loopbackAsync(accepted, dialled)
        self.addCleanup(lambda: (dialled.transport.loseConnection(), self.closed)[1])

    @inlineCallbacks
    def iamat(self, node: Node, client: str, when: str) -> Any:
        request = parse_request(f"IAMAT {client} +1+1 {when}".encode(), 1_700_000_100 * 10**9, 3600 * 10**9)
        assert isinstance(request, Iamat)
        reply = yield node.handle(request, 1_700_000_100 * 10**9)
        return reply

    @inlineCallbacks
    def held(self, node: Node, client: bytes) -> Any:
        record = yield node.store.get(client)
        return record.line if record is not None else None

    @inlineCallbacks
    def test_the_peer_protocol_between_two_nodes(self) -> Any:
        yield until(lambda: self.a.links.up() == [b"B"] and self.b.links.up() == [b"A"], "the link")
        yield until(lambda: b"SYNC-END" in self.a.kinds and b"SYNC-END" in self.b.kinds,
                    "both pulls answered")
        assert self.a.kinds[:1] == [b"SYNC"] and self.b.kinds[:1] == [b"SYNC"]

        # Before a node has loaded its clients' times, updates go once stored: U.
        reply = yield self.iamat(self.a, "slow", "1700000000.5")
        assert reply == b"AT A +99.500000000 slow +1+1 1700000000.5\n"
        yield until(lambda: b"U" in self.b.kinds, "U at B")
        assert (yield self.held(self.b, b"slow")) == reply.rstrip(b"\n")

        # Once loaded, an update known to be newer is forwarded before it is
        # stored (F); the log position follows in a K line.
        yield self.a.load_latest()
        yield self.b.load_latest()
        reply = yield self.iamat(self.a, "fast", "1700000000.5")
        yield until(lambda: b"F" in self.b.kinds, "F at B")
        assert (yield self.held(self.b, b"fast")) == reply.rstrip(b"\n")
        self.a.links.send_log_moved()
        yield until(lambda: b"K" in self.b.kinds, "K at B")

        # B's offset for A follows A's log to its end.
        head = yield self.a.store.log_head()
        for _ in range(100):
            offset = yield self.b.store.peer_offset(b"A")
            if offset == head:
                break
            yield deferLater(reactor, 0.02, lambda: None)
        assert offset == head

        # And the other way: B's update reaches A, and A floods nothing back.
        reply = yield self.iamat(self.b, "from.b", "1700000000.5")
        yield until(lambda: self.a.kinds.count(b"F") == 1, "F at A")
        assert (yield self.held(self.a, b"from.b")) == reply.rstrip(b"\n")
        yield until(lambda: self.a.stats.flood_in == 1, "A to count it")
        assert self.b.stats.flood_in == 2 and self.b.links.flooded == 1
