"""How RedisStore's calls reach Redis: txredisapi's protocol with its
per-call costs cut (storage.store._RedisProtocol) sends the same bytes, and
a script Redis has forgotten (SCRIPT FLUSH, a restart) is sent again."""

from __future__ import annotations

from typing import Any

import txredisapi
from fakes import at_record
from harness import redis_with_store
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from storage.store import _RedisProtocol


class Encoding(unittest.TestCase):
    def test_commands_are_the_bytes_txredisapi_sends(self) -> None:
        ours, theirs = _RedisProtocol(charset=None), txredisapi.RedisProtocol(charset=None)
        for args in [("PING",), ("EVALSHA", "ab" * 20, 6, b"herd:geo", b"", b"a\r\nb\tc" * 100),
                     ("HSET", b"k", "f\u00e9", bytearray(b"v"), 1.5, -7), ("GET", b"\x00\xff")]:
            assert ours._build_command(*args) == theirs._build_command(*args), args


class Scripts(unittest.TestCase):
    def setUp(self) -> None:
        self.redis, self.store = redis_with_store(self, "herd-calls-", own=True)

    def evals(self) -> dict[str, int]:
        info = self.redis.call("INFO", "commandstats").decode()
        stats = dict(line.split(":", 1) for line in info.splitlines() if line.startswith("cmdstat_eval"))
        return {name: int(value.split(",")[0].removeprefix("calls=")) for name, value in stats.items()}

    @inlineCallbacks
    def test_a_script_is_sent_by_its_sha_and_again_once_redis_forgot_it(self) -> Any:
        first = yield self.store.store_if_newer(at_record(1, "1700000000.1", "A"))
        second = yield self.store.store_if_newer(at_record(2, "1700000000.2", "A"))
        assert first.stored and second.stored
        assert self.evals() == {"cmdstat_eval": 1, "cmdstat_evalsha": 1}
        self.redis.call("SCRIPT", "FLUSH")
        third = yield self.store.store_if_newer(at_record(3, "1700000000.3", "A"))
        assert third.stored  # EVALSHA refused (NOSCRIPT), then EVAL
        assert self.evals() == {"cmdstat_eval": 2, "cmdstat_evalsha": 2}
        assert self.redis.call("HGET", b"herd:client:c3", b"time") == b"1700000000.3"
