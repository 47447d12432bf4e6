"""RedisStore.sample_positions (storage/geo_sample.lua) and storage.geohash
against a real Redis: the admin map's sample is bounded, spread, stable, and
its positions are exactly what GEOPOS answers."""

from __future__ import annotations

import random
import time
from typing import Any

from harness import redis_with_store
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from storage import geohash
from storage.store import PositionSample, StoreUnavailable


def geoadd(redis: Any, points: list[tuple[str, float, float]]) -> None:
    """GEOADD (id, lat, lon) points, a thousand per command."""
    for at in range(0, len(points), 1000):
        args = [x for cid, lat, lon in points[at:at + 1000] for x in (repr(lon), repr(lat), cid)]
        redis.call("GEOADD", "herd:geo", *args)


def geopos(redis: Any, ids: list[bytes]) -> list[tuple[float, float]]:
    """(lat, lon) of each id as Redis's GEOPOS answers it."""
    return [(float(p[1]), float(p[0])) for p in redis.call("GEOPOS", "herd:geo", *ids)]


def same_places(got: list[tuple[float, float]], geopos: list[tuple[float, float]]) -> bool:
    """Equal to GEOPOS's answers as far as it prints them (17 decimals, from a
    long double)."""
    return len(got) == len(geopos) and all(
        abs(a - b) < 1e-12 for pair in zip(got, geopos, strict=True) for a, b in zip(*pair, strict=True))


class SamplePositions(unittest.TestCase):
    def setUp(self) -> None:
        self.redis, self.store = redis_with_store(self, "herd-sample-", timeout=1.0)

    @inlineCallbacks
    def test_no_clients(self) -> Any:
        sample = yield self.store.sample_positions(2000)
        assert sample == PositionSample(0, [])

    @inlineCallbacks
    def test_fewer_clients_than_asked_gives_them_all_where_geopos_puts_them(self) -> Any:
        geoadd(self.redis, [("paris", 48.8566, 2.3522), ("sydney", -33.8688, 151.2093), ("zero", 0.0, 0.0)])
        sample = yield self.store.sample_positions(2000)
        assert sample.total == 3
        assert sorted(p[0] for p in sample.points) == [b"paris", b"sydney", b"zero"]
        ids = [p[0] for p in sample.points]
        assert same_places([(lat, lon) for _, lat, lon in sample.points], geopos(self.redis, ids))
        paris = next(p for p in sample.points if p[0] == b"paris")
        assert abs(paris[1] - 48.8566) < 1e-5 and abs(paris[2] - 2.3522) < 1e-5

    @inlineCallbacks
    def test_many_clients_give_a_bounded_spread_stable_sample(self) -> Any:
        rng = random.Random(18)
        # Three quarters of the clients in the west, a quarter in the east.
        points = [(f"c{n}", rng.uniform(-60, 60), rng.uniform(-170, -10) if n % 4 else rng.uniform(10, 170))
                  for n in range(8000)]
        geoadd(self.redis, points)
        sample = yield self.store.sample_positions(2000)
        assert sample.total == 8000
        assert len(sample.points) == 2000
        assert len({p[0] for p in sample.points}) == 2000  # no client twice
        assert same_places([(lat, lon) for _, lat, lon in sample.points],
                           geopos(self.redis, [p[0] for p in sample.points]))
        east = sum(1 for _, _, lon in sample.points if lon > 0)
        assert 400 < east < 600, east  # in proportion: about a quarter
        again = yield self.store.sample_positions(2000)
        assert again == sample  # the clients stayed put: the same sample
        small = yield self.store.sample_positions(7)
        assert (small.total, len(small.points)) == (8000, 7)

    @inlineCallbacks
    def test_fails_within_the_timeout_when_redis_is_stuck(self) -> Any:
        redis, store = redis_with_store(self, "herd-sample-stuck-", timeout=1.0, own=True)
        yield store.sample_positions(1)  # connected
        redis.pause()
        try:
            started = time.monotonic()
            with self.assertRaises(StoreUnavailable):
                yield store.sample_positions(2000)
            assert time.monotonic() - started < 3.0
        finally:
            redis.resume()
        yield store.sample_positions(1)  # serving again (no check left pending)


class GeohashPosition(unittest.TestCase):
    def setUp(self) -> None:
        self.redis, self.store = redis_with_store(self, "herd-geohash-")

    def test_position_of_a_score_is_what_geopos_answers(self) -> None:
        rng = random.Random(6709)
        corners = [(85.05112878, 180.0), (-85.05112878, -180.0), (0.0, 0.0), (85.05112878, -180.0)]
        points = corners + [(rng.uniform(-85.05, 85.05), rng.uniform(-180, 180)) for _ in range(2000)]
        geoadd(self.redis, [(f"p{n}", lat, lon) for n, (lat, lon) in enumerate(points)])
        ids = [f"p{n}".encode() for n in range(len(points))]
        scores = [int(float(self.redis.call("ZSCORE", "herd:geo", cid))) for cid in ids]  # type: ignore[arg-type]
        assert same_places([geohash.position(s) for s in scores], geopos(self.redis, ids))
