"""herd.reconcile.Reconciler against a real Redis: an offset left behind by a
record that could not be stored is pulled again, even when no more updates
come (found by a black-box audit: after a burst, offsets stayed behind until
the next reconnection, which then re-sent tens of thousands of records)."""

from __future__ import annotations

from typing import Any

from harness import redis_with_store
from test_peers import Conn
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest

from herd.peers import PeerLinks
from herd.reconcile import GAP_PULL_INTERVAL, Reconciler


class PullAgain(unittest.TestCase):
    def setUp(self) -> None:
        self.redis, self.store = redis_with_store(self, "herd-retry-")
        self.clock = Clock()
        self.links = PeerLinks([b"P"])
        self.reconciler = Reconciler(self.store, self.links, self.clock)
        self.conn = Conn()

    @inlineCallbacks
    def syncs_sent(self) -> Any:
        """The SYNC lines sent so far (a pull reads the offset from Redis first)."""
        yield deferLater(reactor, 0.2, lambda: None)
        return [line for line in self.conn.take() if line.startswith(b"SYNC")]

    @inlineCallbacks
    def test_an_incomplete_pull_is_pulled_again_until_complete(self) -> Any:
        self.links.add(b"P", self.conn, "test")  # link up: the first pull
        assert (yield self.syncs_sent()) == [b"SYNC - ALL"]
        self.reconciler.record_lost(b"P", self.conn)  # during the pull: it ends incomplete
        self.reconciler.sync_end(b"P", b"E/5-0")
        self.clock.advance(0)
        assert (yield self.syncs_sent()) == [b"SYNC - ALL"]
        assert self.redis.hgetall("herd:peer:P") == {}
        self.reconciler.sync_end(b"P", b"E/5-0")  # complete this time
        yield deferLater(reactor, 0.2, lambda: None)
        assert self.redis.hgetall("herd:peer:P") == {b"epoch": b"E", b"pos": b"5-0"}

    @inlineCallbacks
    def test_a_record_lost_outside_a_pull_starts_one(self) -> Any:
        self.links.add(b"P", self.conn, "test")
        yield self.syncs_sent()
        self.reconciler.sync_end(b"P", b"E/5-0")
        yield deferLater(reactor, 0.2, lambda: None)
        self.reconciler.record_lost(b"P", self.conn)  # a live update not stored; no more come
        self.clock.advance(GAP_PULL_INTERVAL)
        assert (yield self.syncs_sent()) == [b"SYNC E/5-0"]

    @inlineCallbacks
    def test_repeated_incomplete_pulls_back_off(self) -> Any:
        self.links.add(b"P", self.conn, "test")
        waits = []
        for _ in range(4):
            assert len((yield self.syncs_sent())) == 1
            self.reconciler.record_lost(b"P", self.conn)
            self.reconciler.sync_end(b"P", b"E/5-0")
            waited = 0.0
            while not self.reconciler.is_pulling(b"P"):
                self.clock.advance(0.5)
                waited += 0.5
            waits.append(waited)
        assert waits[-1] >= 4.0 > waits[0], waits
