"""The admin endpoint's summary reads (herd.admin.view.SummaryReader) against
a real redis-server: one read serves the requests of the next second, but
never once the node has stored something since it began."""

from __future__ import annotations

from typing import Any

from fakes import at_record
from harness import redis_with_store
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from herd.admin.view import SummaryReader


class Reads(unittest.TestCase):
    def setUp(self) -> None:
        self.redis, self.store = redis_with_store(self, "herd-summary-", own=True)
        self.reader = SummaryReader(self.store, reactor, max_age=60.0)

    def summary_reads(self) -> int:
        stats = self.redis.info("commandstats").get("cmdstat_hmget", "calls=0")
        return int(stats.split(",")[0].removeprefix("calls="))

    @inlineCallbacks
    def test_a_read_is_shared_until_a_store_batch_is_answered(self) -> Any:
        yield self.store.get(b"nobody")  # connected
        first = yield self.reader.current()
        assert first is not None and first.clients == 0
        again = yield self.reader.current()
        assert again == first and self.summary_reads() == 1  # served from the first read
        stored = yield self.store.store_if_newer(at_record(1, "1700000000.1", "A"))
        assert stored.stored
        after = yield self.reader.current()  # within max_age, but the node stored since
        assert after is not None and after.clients == 1 and after.digest != first.digest
        assert self.summary_reads() == 2
