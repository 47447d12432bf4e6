"""herd.latest: when a node may forward an update before Redis has answered."""

from __future__ import annotations

import time
from typing import Any

from harness import redis_with_store, until
from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial import unittest

from herd.latest import LatestTimes
from herd.node import Node
from herd.peer.links import PeerLinks
from herd.wire.client import parse_at_line, parse_request


def loaded(*held: tuple[bytes, int], max_clients: int = 100) -> LatestTimes:
    latest = LatestTimes(max_clients)
    latest.merge(held)
    latest.loaded()
    return latest


def test_nothing_is_known_to_be_newer_before_loading() -> None:
    latest = LatestTimes()
    assert not latest.claim(b"a", 5)
    latest.settle(b"a", 5, may_hold=True)
    assert not latest.claim(b"b", 5)  # b is unknown: Redis may hold it


def test_a_missing_client_is_new_once_loaded() -> None:
    latest = loaded((b"a", 10))
    assert latest.claim(b"b", 1)
    assert not latest.claim(b"b", 1)  # the same time again is not newer


def test_only_strictly_newer_times_are_claimed() -> None:
    latest = loaded((b"a", 10))
    assert not latest.claim(b"a", 9)
    latest.settle(b"a", 9, may_hold=False)
    assert not latest.claim(b"a", 10)
    latest.settle(b"a", 10, may_hold=False)
    assert latest.claim(b"a", 11)
    assert not latest.claim(b"a", 11)


def test_a_client_with_a_slow_write_in_flight_takes_the_slow_path() -> None:
    latest = LatestTimes()
    assert not latest.claim(b"a", 5)  # slow: loading
    latest.loaded()
    # Until that write settles, a newer one must not overtake it: Redis may
    # come to hold 5, or something newer that the table has not seen.
    assert not latest.claim(b"a", 7)
    latest.settle(b"a", 5, may_hold=True)
    assert latest.claim(b"a", 6) is False  # still one in flight (the 7)
    latest.settle(b"a", 7, may_hold=True)
    latest.settle(b"a", 6, may_hold=True)
    assert not latest.claim(b"a", 7)
    latest.settle(b"a", 7, may_hold=False)
    assert latest.claim(b"a", 8)


def test_a_failed_write_still_counts_as_possibly_held() -> None:
    latest = loaded((b"a", 10))
    assert not latest.claim(b"a", 10)
    latest.settle(b"a", 10, may_hold=True)
    assert not latest.claim(b"a", 10)
    latest.settle(b"a", 10, may_hold=False)
    assert latest.claim(b"a", 11)


def test_merging_keeps_the_larger_time() -> None:
    latest = LatestTimes()
    latest.merge([(b"a", 10), (b"a", 5)])
    latest.loaded()
    assert not latest.claim(b"a", 10)
    latest.settle(b"a", 10, may_hold=False)
    assert latest.claim(b"a", 11)


def test_a_full_table_stops_vouching_for_missing_clients() -> None:
    latest = loaded((b"a", 1), (b"b", 1), max_clients=2)
    assert latest.complete
    assert not latest.claim(b"c", 1)  # no room: the slow path, and c goes unrecorded
    latest.settle(b"c", 1, may_hold=True)
    assert not latest.complete
    assert not latest.claim(b"d", 1)
    latest.settle(b"d", 1, may_hold=True)
    assert latest.claim(b"a", 2)  # clients it holds still take the fast path
    assert len(latest) == 2


def test_overflow_while_loading_leaves_it_incomplete() -> None:
    latest = LatestTimes(max_clients=1)
    latest.merge([(b"a", 1), (b"b", 1)])
    latest.loaded()
    assert not latest.complete
    assert not latest.claim(b"z", 1)


class LoadFromRedis(unittest.TestCase):
    """Node.load_latest against a real Redis: every stored client is read, over
    several SCAN steps, and the table then vouches for missing clients."""

    def setUp(self) -> None:
        self.redis, self.store = redis_with_store(self, "herd-latest-")

    @inlineCallbacks
    def test_every_client_in_redis_is_read(self) -> Any:
        records = [parse_at_line(b"AT A +0.100000000 c%d +1+1 %d.25" % (n, 1000 + n)) for n in range(2500)]
        assert None not in records
        results = yield gatherResults([self.store.store_if_newer(r) for r in records])  # type: ignore[arg-type]
        assert len(results) == 2500 and all(r.stored for r in results)
        node = Node(b"A", self.store, None, PeerLinks([]), reactor)  # type: ignore[arg-type]
        yield node.load_latest()
        assert node.latest.complete and len(node.latest) == 2500
        assert not node.latest.claim(b"c7", 1_007_250_000_000)  # held: 1007.25
        node.latest.settle(b"c7", 1_007_250_000_000, may_hold=False)
        assert node.latest.claim(b"c7", 1_007_250_000_001)
        assert node.latest.claim(b"new", 1)


class RefusedWrites(unittest.TestCase):
    """Found by a review: while Redis refused writes (out of memory), every
    IAMAT with a new client id added that id to the table for good (200,000
    made-up ids: the node 54 -> 85 MB)."""

    def setUp(self) -> None:
        self.redis, self.store = redis_with_store(self, "herd-latest-full-", own=True)

    @inlineCallbacks
    def test_ids_redis_refused_to_store_are_not_kept(self) -> Any:
        node = Node(b"A", self.store, None, PeerLinks([]), Clock())  # type: ignore[arg-type]  # its timers: none run
        yield node.load_latest()
        self.redis.call("CONFIG", "SET", "maxmemory", "1")  # every write refused: OOM
        now = time.time_ns()
        held = []
        for n in range(4):
            requests = [parse_request(b"IAMAT made.up.%d.%d +1+1 1700000000" % (n, i), now, 10**12)
                        for i in range(50)]
            replies = yield node.iamats(requests, now)  # type: ignore[arg-type]
            assert replies.count(b"? IAMAT made.up.") == 50, replies[:200]
            held.append(len(node.latest))
        # The first group may have gone the fast way (forwarded, kept to be
        # stored again: the table holds them); once Redis has refused, none.
        assert held[0] <= 50 and held[1:] == [held[0]] * 3, held
        self.redis.call("CONFIG", "SET", "maxmemory", "0")
        yield until(lambda: self.store.serving, what="serving again")
        reply = yield node.iamats([parse_request(b"IAMAT real +1+1 1700000000", now, 10**12)], now)  # type: ignore[list-item]
        assert reply.startswith(b"AT A ")
        assert len(node.latest) == held[0] + 1
