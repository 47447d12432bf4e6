"""herd.peer.reconcile.Reconciler against a real Redis: an offset left behind by a
record that could not be stored is pulled again, even when no more updates
come (found by a black-box audit: after a burst, offsets stayed behind until
the next reconnection, which then re-sent tens of thousands of records)."""

from __future__ import annotations

from typing import Any, cast

from fakes import PeerConn as Conn
from fakes import at_record
from harness import redis_with_store, store_settled
from twisted.internet import reactor
from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from twisted.trial import unittest

from herd.peer.links import PeerLinks
from herd.peer.reconcile import GAP_PULL_INTERVAL, Reconciler


def record(client: int) -> Any:
    return at_record(client, f"1700000000.{client}")


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
        yield store_settled(self.store)
        return [line for line in self.conn.take() if line.startswith(b"SYNC")]

    @inlineCallbacks
    def end(self, token: bytes) -> Any:
        """SYNC-END: settled once its offset write, queued behind the records before it, is answered."""
        self.reconciler.sync_end(b"P", self.conn, token)
        yield store_settled(self.store)

    @inlineCallbacks
    def test_a_pull_cut_short_by_a_stopping_node_is_no_error(self) -> Any:
        """A stopping node closes its Redis under the pulls its closing peer
        connections started: logged at debug level, not as an error."""
        yield self.store.call("ping")  # connected
        seen: list[dict[str, Any]] = []
        observer = cast(ILogObserver, seen.append)
        globalLogPublisher.addObserver(observer)
        try:
            self.links.add(b"P", self.conn, "test")  # link up: a pull reads the offset from Redis ...
            yield self.store.stop()  # ... and the node stops before Redis answers
            yield deferLater(reactor, 0.1, lambda: None)
        finally:
            globalLogPublisher.removeObserver(observer)
        pulls = [e for e in seen if str(e.get("log_format", "")).startswith("pull from")]
        assert [e["log_level"] for e in pulls] == [LogLevel.debug], seen

    @inlineCallbacks
    def test_an_incomplete_pull_is_pulled_again_until_complete(self) -> Any:
        self.links.add(b"P", self.conn, "test")  # link up: the first pull
        assert (yield self.syncs_sent()) == [b"SYNC - ALL"]
        self.reconciler.record_lost(b"P", self.conn)  # during the pull: it ends incomplete
        yield self.end(b"E/5-0")
        self.clock.advance(0)
        assert (yield self.syncs_sent()) == [b"SYNC - ALL"]
        assert self.redis.hgetall("herd:peer:P") == {}
        yield self.end(b"E/5-0")  # complete this time
        assert self.redis.hgetall("herd:peer:P") == {b"epoch": b"E", b"pos": b"5-0"}

    @inlineCallbacks
    def test_a_record_lost_while_the_offset_write_is_in_flight_puts_it_back(self) -> Any:
        self.links.add(b"P", self.conn, "test")
        yield self.syncs_sent()
        yield self.end(b"E/5-0")
        assert self.redis.hgetall("herd:peer:P") == {b"epoch": b"E", b"pos": b"5-0"}
        self.reconciler.pull(b"P", self.conn)  # from E/5-0
        assert (yield self.syncs_sent()) == [b"SYNC E/5-0"]
        self.reconciler.sync_end(b"P", self.conn, b"E/9-0")  # the offset write is queued ...
        self.reconciler.record_lost(b"P", self.conn)  # ... and a record fails before it is answered
        yield store_settled(self.store)
        assert self.redis.hgetall("herd:peer:P") == {b"epoch": b"E", b"pos": b"5-0"}  # where the pull began
        assert not self.reconciler.is_pulling(b"P")

    @inlineCallbacks
    def test_a_record_lost_outside_a_pull_starts_one(self) -> Any:
        self.links.add(b"P", self.conn, "test")
        yield self.syncs_sent()
        yield self.end(b"E/5-0")
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
            yield self.end(b"E/5-0")
            waited = 0.0
            while not self.reconciler.is_pulling(b"P"):
                self.clock.advance(0.5)
                waited += 0.5
            waits.append(waited)
        assert waits[-1] >= 4.0 > waits[0], waits


class OffsetInOrder(unittest.TestCase):
    """SYNC-END moves the offset only once the answer's records are stored
    (found in review: with records still queued in the node, it overtook them)."""

    def setUp(self) -> None:
        self.redis, self.store = redis_with_store(self, "herd-fence-", timeout=1.0, own=True)
        self.links = PeerLinks([b"P"])
        self.reconciler = Reconciler(self.store, self.links, reactor)
        self.conn = Conn()

    @inlineCallbacks
    def test_the_offset_does_not_pass_records_lost_after_sync_end(self) -> Any:
        yield self.store.get(b"nobody")
        self.links.add(b"P", self.conn, "test")  # a pull
        yield store_settled(self.store)
        answer = [self.store.store_if_newer(record(i), tie_break=True, source=b"P") for i in range(20_000)]
        for d in answer:
            d.addErrback(lambda _: self.reconciler.record_lost(b"P", self.conn))
        self.reconciler.sync_end(b"P", self.conn, b"E/5-0")  # right behind its records
        yield deferLater(reactor, 0.05, lambda: None)
        self.redis.kill()  # while most of the answer still waits in the node
        yield DeferredList(answer, consumeErrors=True)
        yield deferLater(reactor, 0.1, lambda: None)
        self.redis.start()
        assert self.redis.hgetall("herd:peer:P") == {}
        assert int(self.redis.call("DBSIZE")) < 20_000  # type: ignore[call-overload]

    @inlineCallbacks
    def test_a_sync_answer_redis_cannot_finish_ends_with_sync_end_dash(self) -> Any:
        yield self.store.get(b"nobody")
        self.redis.kill()
        self.links.add(b"P", self.conn, "test")
        yield self.reconciler.serve(b"P", self.conn, b"- ALL")
        assert self.conn.lines[-1] == b"SYNC-END -"
