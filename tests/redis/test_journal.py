"""The journal (the update log, a Redis list) against a real Redis: positions
0-<k> count every element ever appended, go on across batches, trims and
restarts of the node, are served after a trim while their entries are still
held and reset once trimmed away; a Redis that still holds the stream log of
the version before the journal starts a journal of a new epoch, so a peer's
old offset resets to one full transfer, and the old keys are left alone."""

from __future__ import annotations

from typing import Any

from fakes import PeerConn, at_record
from harness import redis_with_store, until
from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial import unittest

from herd.peer.links import PeerLinks
from herd.peer.reconcile import Reconciler
from herd.wire.peer import Position
from storage import store as store_module
from storage.store import RedisStore


class Journal(unittest.TestCase):
    def setUp(self) -> None:
        self.redis, self.store = redis_with_store(self, "herd-journal-")

    def restarted(self) -> RedisStore:
        """Another store on the same Redis and prefix: the node after a restart."""
        store = RedisStore(reactor, self.store._address, self.store.keys.prefix, timeout=5.0)
        store.start()
        self.addCleanup(store.stop)
        return store

    @inlineCallbacks
    def test_positions_count_on_across_batches_and_restarts(self) -> Any:
        positions: list[Position] = []
        previous: list[Position | None] = []
        store = self.store
        # Batches of 1, 7, 12 and 3 (past several tens), then a restart.
        for size, second in [(1, 1), (7, 2), (12, 3), (3, 4)]:
            results = yield gatherResults([store.store_if_newer(at_record(c, 1700000000 + second))
                                           for c in range(size)])
            positions += [r.position for r in results]
            previous += [r.previous for r in results]
        store = self.restarted()
        results = yield gatherResults([store.store_if_newer(at_record(c, 1700000005)) for c in range(15)])
        positions += [r.position for r in results]
        previous += [r.previous for r in results]
        epoch = positions[0].epoch
        assert positions == [Position(epoch, b"0-%d" % k) for k in range(1, 39)]
        assert previous == [Position(epoch, b"0-%d" % k) for k in range(38)]
        assert (yield store.log_head()) == Position(epoch, b"0-38")
        assert self.redis.call("LLEN", "herd:journal") == 38
        assert self.redis.call("LINDEX", "herd:journal", -1) == b"c14"

    @inlineCallbacks
    def test_large_positions_are_written_in_full(self) -> Any:
        # Past 1e14 Lua's "%.14g" would write 1e+14: positions never use it.
        self.redis.call("SET", "herd:journal:base", "99999999999995")
        records = [at_record(c, 1700000000) for c in range(10)]
        results = yield gatherResults([self.store.store_if_newer(record) for record in records])
        first = 99999999999996
        assert [r.position.entry for r in results] == [b"0-%d" % k for k in range(first, first + 10)]
        assert results[0].previous.entry == b"0-99999999999995"
        head = yield self.store.log_head()
        assert head.entry == b"0-100000000000005"
        chunk = yield self.store.log_since(Position(head.epoch, b"0-99999999999999"), 100, b"")
        assert chunk.end == head and chunk.entries == 6

    @inlineCallbacks
    def test_a_position_is_served_until_its_entries_are_trimmed_away(self) -> Any:
        self.patch(store_module, "LOG_BOUND", b"10")  # trimmed once past 11 entries
        results = []
        for c in range(12):  # one batch each
            results.append((yield self.store.store_if_newer(at_record(c, 1700000000))))
        epoch = results[0].position.epoch
        # 12 > 10 + 10/10: the two oldest went in one LTRIM, counted in the base.
        assert self.redis.call("LLEN", "herd:journal") == 10
        assert self.redis.call("GET", "herd:journal:base") == b"2"
        assert (yield self.store.log_head()) == Position(epoch, b"0-12")
        assert (yield self.store.log_since(Position(epoch, b"0-1"), 100, b"")) is None  # 0-2 is gone
        chunk = yield self.store.log_since(Position(epoch, b"0-2"), 4, b"")
        assert chunk.end == Position(epoch, b"0-6") and chunk.entries == 4
        assert chunk.lines == [at_record(c, 1700000000).line for c in range(2, 6)]
        chunk = yield self.store.log_since(Position(epoch, b"0-11"), 4, b"")
        assert (chunk.end, chunk.entries, chunk.lines) == (Position(epoch, b"0-12"), 1,
                                                          [at_record(11, 1700000000).line])
        chunk = yield self.store.log_since(Position(epoch, b"0-12"), 4, b"")
        assert (chunk.end, chunk.entries, chunk.lines) == (Position(epoch, b"0-12"), 0, [])
        assert (yield self.store.log_since(Position(epoch, b"0-13"), 4, b"")) is None  # beyond the end
        # The next record goes on from the last position: 0-13, after 0-12.
        result = yield self.store.store_if_newer(at_record(12, 1700000000))
        assert (result.position, result.previous) == (Position(epoch, b"0-13"), Position(epoch, b"0-12"))

    @inlineCallbacks
    def test_a_journal_gone_back_in_its_epoch_is_not_written_on_in_it(self) -> Any:
        """Found by reviews: a Redis put back to an older copy of itself (or one
        that lost its last writes) kept its epoch with fewer entries, and the
        node wrote new updates at positions its peers had applied already.
        The first batch that finds fewer entries than the node saw begins a
        new log, before it appends anything."""
        results = yield gatherResults([self.store.store_if_newer(at_record(c, 1700000000)) for c in range(5)])
        old_epoch = results[0].position.epoch
        self.redis.call("RPOP", "herd:journal", 3)  # as an older copy of this Redis: 2 entries, same epoch
        result = yield self.store.store_if_newer(at_record(9, 1700000000))
        assert result.position.epoch != old_epoch and result.position.entry == b"0-3"
        yield until(lambda: self.store.log_lost, what="the loss noted")  # (on_connected ran: the node pulls)

    @inlineCallbacks
    def test_entries_from_the_asking_peer_are_left_out(self) -> Any:
        yield gatherResults([
            self.store.store_if_newer(at_record("kiwi", 1700000000)),
            self.store.store_if_newer(at_record("emu", 1700000000), tie_break=True, source=b"P"),
            self.store.store_if_newer(at_record("owl", 1700000000), tie_break=True, source=b"P F"),
        ])
        assert self.redis.call("LRANGE", "herd:journal", 0, -1) == [b"kiwi", b"emu\tP", b"owl\tP F"]
        head = yield self.store.log_head()
        start = Position(head.epoch, b"0-0")
        chunk = yield self.store.log_since(start, 10, b"P")
        assert chunk.lines == [at_record(c, 1700000000).line for c in ("kiwi", "owl")]
        chunk = yield self.store.log_since(start, 10, b"")
        assert chunk.lines == [at_record(c, 1700000000).line for c in ("kiwi", "emu", "owl")]

    @inlineCallbacks
    def test_an_upgraded_redis_starts_a_journal_of_a_new_epoch(self) -> Any:
        # What version 0.2.0 left: its stream log and its epoch, and a peer's
        # offset into that log.
        old_id = self.redis.call("XADD", "herd:log", "*", "c", "c0")
        self.redis.call("SET", "herd:log:epoch", "1700000000.1")
        self.redis.call("HSET", "herd:client:c0", "at", at_record(0, 1700000000).line)
        old = Position(b"1700000000.1", old_id)
        assert (yield self.store.log_since(old, 10, b"")) is None  # reset: another epoch

        result = yield self.store.store_if_newer(at_record(1, 1700000000))
        assert result.position.epoch != old.epoch
        assert (result.previous.entry, result.position.entry) == (b"0-0", b"0-1")
        assert (yield self.store.log_since(old, 10, b"")) is None
        assert (yield self.store.log_head()) == result.position
        # The old keys are left alone (README: DEL them after the upgrade).
        assert self.redis.call("XLEN", "herd:log") == 1
        assert self.redis.call("GET", "herd:log:epoch") == b"1700000000.1"

        # A peer that asks from its old offset gets one full transfer, then
        # its offset is in the new epoch.
        links = PeerLinks([b"P"])
        conn = PeerConn()
        links.add(b"P", conn, "test")
        conn.take()
        yield Reconciler(self.store, links, Clock()).serve(b"P", conn, old.token)
        sent = conn.take()
        assert sorted(line for line in sent if line.startswith(b"R ")) == sorted(
            b"R " + at_record(c, 1700000000).line for c in range(2))
        assert sent[-1].endswith(result.position.token), sent[-1]
