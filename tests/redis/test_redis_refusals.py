"""A Redis that refuses writes (here: full, maxmemory reached under
``noeviction``) is counted: each refused call in Stats.redis_refused by
reason, Stats.redis_full while the refusals say OOM, cleared once Redis
takes a write again (the alert of docs/OPERATIONS.md "Alerts")."""

from __future__ import annotations

from typing import Any

from harness import redis_with_store, until
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial import unittest

from herd.stats import Stats
from herd.wire.client import parse_at_line


def record(client: bytes, when: bytes) -> Any:
    parsed = parse_at_line(b"AT A +0.000000001 " + client + b" +1+1 " + when)
    assert parsed is not None
    return parsed


class RefusalsAreCounted(unittest.TestCase):
    def setUp(self) -> None:
        self.redis, self.store = redis_with_store(self, "herd-full-", timeout=2.0, own=True)
        self.stats = Stats()
        self.store.on_refused = self.stats.refused_by_redis
        self.store.on_connected.append(self.stats.redis_serves)

    @inlineCallbacks
    def test_oom_refusals_are_counted_and_full_clears_once_redis_takes_writes(self) -> Any:
        yield self.store.store_if_newer(record(b"before", b"1"))
        self.redis.call("CONFIG", "SET", "maxmemory", "1")
        for n in range(2):
            with self.assertRaisesRegex(Exception, "^OOM "):
                yield self.store.store_if_newer(record(b"refused%d" % n, b"2"))
        assert self.stats.redis_refused == {"OOM": 2}  # the store's own polls are not counted
        assert self.stats.redis_full
        yield deferLater(reactor, 0.3, lambda: None)  # the store polls Redis meanwhile
        assert self.stats.redis_refused == {"OOM": 2}
        self.redis.call("CONFIG", "SET", "maxmemory", "0")
        yield until(lambda: not self.stats.redis_full, "redis_full to clear")
        result = yield self.store.store_if_newer(record(b"after", b"3"))
        assert result.stored
        assert self.stats.redis_refused == {"OOM": 2} and self.stats.redis_refusing == ""
