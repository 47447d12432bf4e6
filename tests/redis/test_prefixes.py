"""Key prefixes holding glob characters (found by a review): the node found
its clients with SCAN MATCH <prefix>client:*, the prefix unescaped, so a node
with prefix "a[1]:" loaded none of its own clients' times at start, and one
with "gl*b:" those of a node with "glob:" on the same Redis too."""

from __future__ import annotations

import itertools
from typing import Any

from fakes import at_record
from harness import shared_redis
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from config.schema import RedisAddress
from storage.store import RedisStore

_runs = itertools.count()


class GlobPrefixes(unittest.TestCase):
    def store(self, prefix: bytes) -> RedisStore:
        server = shared_redis()
        store = RedisStore(reactor, RedisAddress(server.url, "127.0.0.1", server.port), prefix, timeout=5.0)
        store.start()
        self.addCleanup(store.stop)
        return store

    @inlineCallbacks
    def clients(self, store: RedisStore) -> Any:
        """Every client id the store's two scans find (they must agree)."""
        by_time: set[bytes] = set()
        by_record: set[bytes] = set()
        for scan, found in ((store.scan_times, by_time), (store.scan_records, by_record)):
            cursor = b"0"
            while True:
                cursor, batch = yield scan(cursor, 100)
                found.update(item[0] if isinstance(item, tuple) else item.split()[3] for item in batch)
                if cursor == b"0":
                    break
        assert by_time == by_record, (by_time, by_record)
        return by_time

    @inlineCallbacks
    def test_a_prefix_is_matched_literally(self) -> Any:
        run = next(_runs)
        prefixes = [b"a[1]:%d:" % run, b"gl*b%d:" % run, b"glob%d:" % run, b"q?%d:" % run, b"qq%d:" % run]
        stores = [self.store(prefix) for prefix in prefixes]
        for n, store in enumerate(stores):
            assert (yield store.store_if_newer(at_record(n, "1700000000.5", "A"))).stored
        for n, store in enumerate(stores):
            assert (yield self.clients(store)) == {at_record(n, "1700000000.5", "A").client_id}
