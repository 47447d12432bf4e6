"""A SYNC answer costs the state that differs, not the updates missed (issue
20): a client that moved 25 times since the peer's offset is sent once, across
every chunk of the answer, and a full transfer sends each client once."""

from __future__ import annotations

from typing import Any

from fakes import PeerConn as Conn
from fakes import at_record
from harness import redis_with_store, until
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial import unittest

from herd.peer import reconcile
from herd.peer.links import PeerLinks
from herd.peer.reconcile import Reconciler
from herd.wire.peer import Position


def record(client: int, t: int) -> Any:
    return at_record(client, f"{t}.5")


class AnswerCost(unittest.TestCase):
    def setUp(self) -> None:
        self.redis, self.store = redis_with_store(self, "herd-answer-")
        self.links = PeerLinks([b"P"])
        self.reconciler = Reconciler(self.store, self.links, Clock())
        self.conn = Conn()
        self.links.add(b"P", self.conn, "test")
        self.conn.take()  # (the link-up pull's SYNC)
        self.patch(reconcile, "CHUNK", 7)  # many chunks: repeats cross chunk boundaries

    @inlineCallbacks
    def moves(self, clients: int, times: int) -> Any:
        for t in range(1, times + 1):
            for c in range(clients):
                yield self.store.store_if_newer(record(c, 1700000000 + t))

    @inlineCallbacks
    def answer(self, since: Position | None) -> Any:
        yield self.reconciler.serve(b"P", self.conn, since.token if since else b"-")
        return [line for line in self.conn.take() if line.startswith(b"R ")]

    @inlineCallbacks
    def test_a_client_that_moved_many_times_is_sent_once(self) -> Any:
        yield self.moves(3, 1)
        start = yield self.store.log_head()
        yield self.moves(10, 25)  # 250 log entries, 36 chunks
        sent = yield self.answer(start)
        assert sorted(sent) == sorted(b"R " + record(c, 1700000025).line for c in range(10))

    @inlineCallbacks
    def test_a_full_transfer_sends_each_client_once(self) -> Any:
        yield self.moves(10, 5)
        sent = yield self.answer(None)
        assert sorted(sent) == sorted(b"R " + record(c, 1700000005).line for c in range(10))

    @inlineCallbacks
    def answer_held_after_its_first_chunk(self) -> Any:
        """An answer to a SYNC for 30 clients' updates, its first chunk
        written and the transport full: (the answer's Deferred, the Deferred
        that says the peer has read)."""
        yield self.store.store_if_newer(record(100, 1700000001))
        start = yield self.store.log_head()
        for c in range(30):
            yield self.store.store_if_newer(record(c, 1700000001))
        full: Deferred[None] = Deferred()
        self.conn.full = full
        answered = self.reconciler.serve(b"P", self.conn, start.token)
        assert answered is not None
        yield until(lambda: self.conn.writable_asked > 0, what="the first chunk written")
        return answered, full

    @inlineCallbacks
    def test_an_answer_waits_while_the_transport_is_full(self) -> Any:
        """Found by a review: an answer wrote every chunk at once, so a peer
        that read slowly (or not at all) had the whole transfer queued in this
        node's memory. The answer now waits while the transport is full."""
        answered, full = yield self.answer_held_after_its_first_chunk()
        assert not answered.called
        first = [line for line in self.conn.take() if line.startswith(b"R ")]
        assert len(first) == 7  # one chunk of the log, then it waits
        self.conn.full = None
        full.callback(None)  # the peer has read
        yield answered
        rest = [line for line in self.conn.take() if line.startswith(b"R ")]
        assert sorted(first + rest) == sorted(b"R " + record(c, 1700000001).line for c in range(30))

    @inlineCallbacks
    def test_a_log_trimmed_past_the_answer_while_it_runs_turns_it_into_a_full_transfer(self) -> Any:
        """Found by a review: the next chunk's read came back empty-handed
        ('reset') and the answer failed on it ("'NoneType' object has no
        attribute 'lines'"), ending with no position: the peer waited and
        asked again."""
        answered, full = yield self.answer_held_after_its_first_chunk()
        self.redis.call("LTRIM", "herd:journal", 20, -1)  # the journal trimmed past the answer
        self.redis.call("INCRBY", "herd:journal:base", 20)
        self.conn.full = None
        full.callback(None)
        yield answered
        lines = self.conn.take()
        sent = {line for line in lines if line.startswith(b"R ")}
        assert sent == {b"R " + record(c, 1700000001).line for c in [*range(30), 100]}
        head = yield self.store.log_head()
        assert lines[-1] == b"SYNC-END " + head.token  # an answer that ends where the log stands
