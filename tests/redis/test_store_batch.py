"""store_batch.lua against a real Redis: one batch (one Lua call) mixing a
client's update, a peer's update forwarded before the peer stored it (its
source "<peer> F" holds a space), a chained update, an older record and a K's
log step keeps every record apart, stores the section 4 schema and logs each
stored update with its source."""

from __future__ import annotations

import hashlib
from typing import Any

from harness import redis_with_store
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial import unittest

from herd.wire.client import AtRecord, parse_at_line
from herd.wire.peer import LogStep, Position


def record(line: bytes) -> AtRecord:
    parsed = parse_at_line(line)
    assert parsed is not None
    return parsed


class OneBatch(unittest.TestCase):
    def setUp(self) -> None:
        self.redis, self.store = redis_with_store(self, "herd-batch-")

    @inlineCallbacks
    def test_a_mixed_batch(self) -> Any:
        yield self.store.set_peer_offset(b"P", Position(b"E", b"1-0"))
        step = LogStep(b"P", Position(b"E", b"1-0"), Position(b"E", b"2-0"))
        client = record(b"AT A +0.100000000 kiwi +34.068930-118.445127 1621464827.959498503")
        forwarded = record(b"AT P -1.000000000 emu +10.5-020.25 100")
        chained = record(b"AT P +0.000000001 owl -89.9+179.999 1700000000.5")
        older = record(b"AT Q +0.000000002 kiwi +1+1 1621464827.9594985")
        # Queued in one reactor turn: one Lua call, applied in this order.
        # Some known newer (their digest parts travel XORed in the batch's), some not.
        results = yield gatherResults([
            self.store.store_if_newer(client, known_newer=True),
            self.store.store_if_newer(forwarded, tie_break=True, source=b"P F"),
            self.store.store_if_newer(chained, tie_break=True, step=step, source=b"P", known_newer=True),
            self.store.store_if_newer(older, tie_break=True, source=b"Q"),
            self.store.advance_offset(LogStep(b"P", step.pos, Position(b"E", b"3-0"))),
        ])
        stored = [r.stored for r in results]
        assert stored == [True, True, True, False, False], results
        assert [r.advanced for r in results] == [False, False, True, False, True], results
        epoch = results[0].position.epoch
        assert results[1].previous == results[0].position and results[2].previous == results[1].position
        assert {r.position.epoch for r in results[:3]} == {epoch}
        for rec in (client, forwarded, chained):
            fields = self.redis.hgetall(b"herd:client:" + rec.client_id)
            assert fields == {b"at": rec.line, b"server": rec.server, b"skew": rec.skew,
                              b"location": rec.location.text, b"lat": rec.location.lat,
                              b"lon": rec.location.lon, b"time": rec.time.text}
        # The journal: one element per stored record, at positions 0-1, 0-2, 0-3.
        assert [r.position.entry for r in results[:3]] == [b"0-1", b"0-2", b"0-3"]
        assert self.redis.call("LRANGE", "herd:journal", 0, -1) == [b"kiwi", b"emu\tP F", b"owl\tP"]
        # The GEO set: kiwi and emu; owl's latitude is beyond Redis GEO's.
        assert sorted(self.redis.call("ZRANGE", "herd:geo", 0, -1)) == [b"emu", b"kiwi"]
        assert self.redis.hgetall(b"herd:peer:P") == {b"epoch": b"E", b"pos": b"3-0"}
        assert self.redis.call("HGET", "herd:summary", "clients") == b"3"
        # The digest: XOR over clients of the first 64 bits of SHA-1(AT line).
        digest = 0
        for rec in (client, forwarded, chained):
            digest ^= int(hashlib.sha1(rec.line).hexdigest()[:16], 16)
        assert self.redis.call("HGET", "herd:summary", "digest") == b"%016x" % digest

    @inlineCallbacks
    def test_an_update_replaces_its_client_in_the_digest(self) -> Any:
        first = record(b"AT A +0.100000000 kiwi +1+1 100")
        second = record(b"AT A +0.100000000 kiwi +2+2 101")
        yield self.store.store_if_newer(first)
        yield self.store.store_if_newer(second)
        assert self.redis.call("HGET", "herd:summary", "clients") == b"1"
        digest = int(hashlib.sha1(second.line).hexdigest()[:16], 16)
        assert self.redis.call("HGET", "herd:summary", "digest") == b"%016x" % digest

    @inlineCallbacks
    def test_a_group_changes_the_digest_by_what_it_stored(self) -> Any:
        # The node sends the XOR of the parts of the records it knows newer;
        # the script adds the parts of the others it stores and takes back
        # those of the known ones it does not store (a wrong hint: it can only
        # cost Redis work) and of the records replaced.
        first = record(b"AT A +0.100000000 kiwi +1+1 100")
        second = record(b"AT A +0.100000000 kiwi +2+2 101")
        stale = record(b"AT B +0.100000000 kiwi +3+3 99")
        other = record(b"AT A +0.100000000 emu +4+4 100")
        expected = 0
        for rec in (second, other):
            expected ^= int(hashlib.sha1(rec.line).hexdigest()[:16], 16)
        digest = b"%016x" % expected
        for known in (None, [True] * 4, [False, True, True, False]):
            redis, store = redis_with_store(self, "herd-digest-")
            results = yield store.store_group([first, second, stale, other], b"B F", known)
            assert [r.stored for r in results] == [True, True, False, True]
            assert redis.call("HMGET", "herd:summary", "clients", "digest") == [b"2", digest], known
            yield store.store_group([stale], known_newer=[True])  # nothing stored: the digest stays
            assert redis.call("HGET", "herd:summary", "digest") == digest, known

    @inlineCallbacks
    def test_times_compare_exactly_to_the_nanosecond(self) -> Any:
        # Each against what the one before it left held: times one double
        # apart or nanoseconds apart (the same double), written with leading
        # or trailing zeros, from 1 to 15 digits of seconds.
        steps = [
            (b"9", False, True),
            (b"10", False, True),
            (b"9.999999999", False, False),
            (b"1700000000.000000002", False, True),
            (b"1700000000.000000001", False, False),  # the same double, a nanosecond older
            (b"1700000000.000000003", False, True),  # the same double, a nanosecond newer
            (b"0001700000000.000000003", False, False),  # the same instant, not a tie-break
            (b"1700000000", False, False),
            (b"1700000000.1", False, True),
            (b"999999999999999.999999998", False, True),
            (b"999999999999999.999999997", False, False),
            (b"999999999999999.999999999", False, True),
        ]
        for time, tie_break, newer in steps:
            rec = record(b"AT A +0.100000000 kiwi +1+1 " + time)
            result = yield self.store.store_if_newer(rec, tie_break=tie_break)
            assert result.stored == newer, (time, result)
            held = self.redis.call("HGET", "herd:client:kiwi", "time")
            assert (held == time) == newer, (time, held)

    @inlineCallbacks
    def test_the_same_instant_written_otherwise_is_a_tie(self) -> Any:
        held = record(b"AT A +0.100000000 kiwi +1+1 1700000000.5")
        yield self.store.store_if_newer(held)
        smaller = record(b"AT A +0.100000000 kiwi +1+1 01700000000.50")  # "0" < "1": bytewise smaller
        larger = record(b"AT B +0.100000000 kiwi +1+1 1700000000.50")
        assert not (yield self.store.store_if_newer(larger)).stored  # no tie-break: equal is not newer
        assert not (yield self.store.store_if_newer(smaller, tie_break=True)).stored
        assert (yield self.store.store_if_newer(larger, tie_break=True)).stored

    @inlineCallbacks
    def test_a_batch_names_the_log_entry_before_its_first_stored_one(self) -> Any:
        first = yield self.store.store_if_newer(record(b"AT A +0.100000000 kiwi +1+1 100"))
        assert first.previous == Position(first.position.epoch, b"0-0")  # an empty log
        older = yield self.store.store_if_newer(record(b"AT A +0.100000000 kiwi +1+1 99"))
        assert not older.stored and older.previous is None
        second = yield self.store.store_if_newer(record(b"AT A +0.100000000 emu +1+1 100"))
        assert second.previous == first.position
        # Trimmed from its head (as store_batch.lua trims: LTRIM, counted in the base).
        self.redis.call("LTRIM", "herd:journal", 1, -1)
        self.redis.call("INCRBY", "herd:journal:base", 1)
        third = yield self.store.store_if_newer(record(b"AT A +0.100000000 owl +1+1 100"))
        assert third.previous == second.position
