"""store_batch.lua's K check against a real Redis: a peer's offset moves past
forwarded updates only when this Redis holds each of them, or something newer."""

from __future__ import annotations

from typing import Any

from harness import redis_with_store
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from herd.node import MAX_HELD, Node, Origin
from herd.peer.links import PeerLinks
from herd.wire.client import parse_at_line
from herd.wire.peer import LogStep, Position
from storage.store import StoreResult

HELD = b"AT B +0.100000000 c +1+1 1000.5"


class AdvanceOffsetHolds(unittest.TestCase):
    def setUp(self) -> None:
        self.redis, self.store = redis_with_store(self, "herd-holds-")

    @inlineCallbacks
    def advance(self, *holds: bytes) -> Any:
        """Try to move peer P's offset from E/1-0 to E/2-0 with ``holds``; True if it moved."""
        yield self.store.set_peer_offset(b"P", Position(b"E", b"1-0"))
        step = LogStep(b"P", Position(b"E", b"1-0"), Position(b"E", b"2-0"))
        result = yield self.store.advance_offset(step, list(holds))
        return result.advanced

    @inlineCallbacks
    def test_holds_decide_whether_the_offset_moves(self) -> Any:
        record = parse_at_line(HELD)
        assert record is not None
        yield self.store.store_if_newer(record)
        held = (b"c", b"1000.5", b"B", b"+0.100000000")
        assert (yield self.advance())
        assert (yield self.advance(*held))  # the very record
        assert (yield self.advance(b"c", b"999", b"X", b"+0.000000000"))  # something newer is held
        assert not (yield self.advance(b"c", b"1000.500000001", b"B", b"+0.100000000"))  # newer than held
        assert not (yield self.advance(b"nobody", b"1", b"B", b"+0.100000000"))  # not held at all
        # The same time but another AT line (the same IAMAT sent to two nodes):
        # the offset must not move; a SYNC settles which line wins.
        assert not (yield self.advance(b"c", b"1000.5", b"A", b"+0.200000000"))
        # The same instant written otherwise is another AT line too.
        assert not (yield self.advance(b"c", b"1000.50", b"B", b"+0.100000000"))
        assert not (yield self.advance(*held, b"nobody", b"1", b"B", b"+0.1"))


class HeldInMemory(unittest.TestCase):
    """Updates a peer forwarded that this node stored need no Redis lookup when
    the peer's K names them; a Redis reconnection forgets them."""

    def setUp(self) -> None:
        self.redis, self.store = redis_with_store(self, "herd-held-")
        self.node = Node(b"A", self.store, None, PeerLinks([b"P"]), reactor)  # type: ignore[arg-type]

    def test_only_holds_not_seen_stored_go_to_redis(self) -> None:
        seen = (b"c", b"1000.5", b"B", b"+0.100000000")
        other = (b"d", b"7", b"B", b"+0.100000000")
        self.node._remember_stored(b"P", [seen])
        assert self.node._not_known_stored(b"P", [seen, other]) == list(other)
        assert self.node._not_known_stored(b"P", [seen]) == list(seen)  # named once: forgotten
        assert self.node._not_known_stored(b"Q", [seen]) == list(seen)

    def test_updates_forwarded_to_a_peer_and_stored_here_need_no_lookup(self) -> None:
        """Its K lines list the updates we forwarded to it (it got them as F):
        once stored here, those are known too."""
        record = parse_at_line(HELD)
        assert record is not None
        stored = StoreResult(True, Position(b"E", b"5-0"), False, Position(b"E", b"4-0"))
        self.node._stored(stored, record, Origin(None, False), frozenset({b"P"}))
        key = (b"c", b"1000.5", b"B", b"+0.100000000")
        assert self.node._not_known_stored(b"P", [key]) == []
        assert self.node._not_known_stored(b"Q", [key]) == list(key)
        not_stored = StoreResult(False, None, False)
        self.node._stored(not_stored, record, Origin(None, False), frozenset({b"P"}))
        assert self.node._not_known_stored(b"P", [key]) == list(key)

    def test_only_the_latest_are_remembered(self) -> None:
        keys = [(b"c%d" % i, b"1", b"B", b"+0.100000000") for i in range(3 * MAX_HELD)]
        for key in keys:
            self.node._remember_stored(b"P", [key])
        assert self.node._not_known_stored(b"P", [keys[0]]) == list(keys[0])
        assert self.node._not_known_stored(b"P", [keys[-MAX_HELD // 2]]) == []

    def test_a_redis_reconnection_forgets_them(self) -> None:
        seen = (b"c", b"1000.5", b"B", b"+0.100000000")
        self.node._remember_stored(b"P", [seen])
        assert self.node._stored_from.clear in self.store.on_connected
        self.node._stored_from.clear()
        assert self.node._not_known_stored(b"P", [seen]) == list(seen)
