"""store_batch.lua and the GEO set's latitude limit against a real Redis:
SPEC keeps clients beyond +-85.05112878 out of <prefix>geo, compared exactly
(Redis would round the text to a double and index a latitude a hair beyond)."""

from __future__ import annotations

from typing import Any

from harness import redis_with_store
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial import unittest

from herd.wire.client import Location, parse_at_line

CASES = [  # latitude, in the GEO set
    (b"+85.05112878", True),
    (b"-85.05112878", True),
    (b"+85.051128780000000000", True),
    (b"+0085.0511287799999999999999", True),
    (b"+85", True),
    (b"-84.9", True),
    (b"+0.5", True),
    # Told by their first digits (store_batch.lua's quick check), or not.
    (b"+84.999999999999999999", True),
    (b"-80.25", True),
    (b"-08.5", True),
    (b"+7", True),
    (b"+89.5", False),
    (b"-85.1", False),
    (b"+85.0511287800000000000001", False),  # a double rounds this to the limit itself
    (b"-85.0511287800000000000001", False),
    (b"+85.051128781", False),
    (b"+85.06", False),
    (b"+86", False),
    (b"-90.0", False),
]


class GeoLatitudeLimit(unittest.TestCase):
    def setUp(self) -> None:
        self.redis, self.store = redis_with_store(self, "herd-geo-")

    @inlineCallbacks
    def test_only_latitudes_within_the_limit_are_in_the_geo_set(self) -> Any:
        for n, (lat, indexed) in enumerate(CASES):
            client = b"c%d" % n
            record = parse_at_line(b"AT A +0.000000000 %s %s+010.0 1000" % (client, lat))
            assert record is not None, lat
            yield self.store.store_if_newer(record)
            in_geo = self.redis.call("ZSCORE", "herd:geo", client) is not None
            assert in_geo == indexed, (lat, in_geo)
            assert self.redis.hgetall(b"herd:client:" + client)[b"lat"] == lat  # stored in full either way

    @inlineCallbacks
    def test_a_client_moving_beyond_the_limit_leaves_the_geo_set(self) -> Any:
        for time, lat in ((b"1", b"+85.05112878"), (b"2", b"+85.0511287800000000000001")):
            record = parse_at_line(b"AT A +0.000000000 mover %s+010.0 %s" % (lat, time))
            assert record is not None
            yield self.store.store_if_newer(record)
        assert self.redis.call("ZSCORE", "herd:geo", "mover") is None
        assert self.redis.hgetall("herd:client:mover")[b"time"] == b"2"

    @inlineCallbacks
    def test_within_one_batch_a_clients_last_position_decides(self) -> Any:
        moves = {  # client: latitudes in one batch (one Lua call), in order
            b"in-out": (b"+10", b"+20", b"+86"),
            b"out-in": (b"+86", b"+10", b"+20"),
            b"in-out-in": (b"+10", b"-86", b"+30"),
            b"out-in-out": (b"-86", b"+10", b"+87"),
        }
        calls = []
        for client, lats in moves.items():
            for time, lat in enumerate(lats, start=1):
                record = parse_at_line(b"AT A +0.000000000 %s %s+010.0 %d" % (client, lat, time))
                assert record is not None
                calls.append(self.store.store_if_newer(record))
        results = yield gatherResults(calls)
        assert all(r.stored for r in results)
        assert results[-1].previous == results[-2].position  # one batch
        for client, lats in moves.items():
            pos = self.redis.call("GEOPOS", "herd:geo", client)[0]
            if lats[-1] == b"+86" or lats[-1] == b"+87":
                assert pos is None, (client, pos)
            else:
                assert pos is not None and abs(float(pos[1]) - float(lats[-1])) < 1e-5, (client, pos)
        assert self.redis.call("ZCARD", "herd:geo") == 2

    @inlineCallbacks
    def test_a_position_geoadd_refuses_is_left_out_and_the_batchs_others_are_in(self) -> Any:
        # Not the AT line grammar (a node never makes it; Redis might hold it from
        # another hand): store_batch.lua leaves it to GEOADD, which refuses the
        # batch's whole GEOADD; the positions then go one by one, and a client
        # whose last position was refused leaves the set.
        good = parse_at_line(b"AT A +0.000000000 good +10.5+020.25 2")
        before = parse_at_line(b"AT A +0.000000000 odd +1.0+010.0 1")
        assert good is not None and before is not None
        yield self.store.store_if_newer(before)
        assert self.redis.call("ZSCORE", "herd:geo", "odd") is not None
        odd = before._replace(location=Location(b"+1e5+010.0", b"+1e5", b"+010.0"), time=good.time,
                              line=b"AT A +0.000000000 odd +1e5+010.0 2")
        results = yield gatherResults([self.store.store_if_newer(odd), self.store.store_if_newer(good)])
        assert all(r.stored for r in results)
        assert results[1].previous == results[0].position  # one batch
        assert self.redis.call("ZSCORE", "herd:geo", "odd") is None
        assert self.redis.call("GEOPOS", "herd:geo", "good")[0] is not None
        assert self.redis.hgetall("herd:client:odd")[b"lat"] == b"+1e5"  # stored in full
