"""How RedisStore's calls reach Redis: txredisapi's protocol with its
per-call costs cut (storage.store._RedisProtocol) sends the same bytes, a
script Redis has forgotten (SCRIPT FLUSH, a restart) is sent again, and a
call Redis does not answer times out as with txredisapi's own timers."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import txredisapi
from fakes import at_record
from harness import redis_with_store
from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial import unittest

from storage.store import ScriptCall, StoreUnavailable, _RedisProtocol


class Encoding(unittest.TestCase):
    def test_commands_are_the_bytes_txredisapi_sends(self) -> None:
        ours, theirs = _RedisProtocol(charset=None), txredisapi.RedisProtocol(charset=None)
        for args in [("PING",), ("EVALSHA", "ab" * 20, 6, b"herd:geo", b"", b"a\r\nb\tc" * 100),
                     ("HSET", b"k", "f\u00e9", bytearray(b"v"), 1.5, -7), ("GET", b"\x00\xff")]:
            assert ours._build_command(*args) == theirs._build_command(*args), args

    def test_a_script_call_is_the_evalsha_txredisapi_sends(self) -> None:
        theirs = txredisapi.RedisProtocol(charset=None)
        call = ScriptCall(b"return 1", [b"herd:geo", b"herd:journal"], [b"herd:"])
        assert call.sha == hashlib.sha1(b"return 1").hexdigest()
        for args in ([], [b"1000", b"", b"a\r\nb\tc" * 100]):
            assert call.command(args) == theirs._build_command(
                "EVALSHA", call.sha, 2, b"herd:geo", b"herd:journal", b"herd:", *args)


class Scripts(unittest.TestCase):
    def setUp(self) -> None:
        self.redis, self.store = redis_with_store(self, "herd-calls-", own=True)

    def evals(self) -> dict[str, int]:
        stats = self.redis.info("commandstats")
        return {name: int(value.split(",")[0].removeprefix("calls="))
                for name, value in stats.items() if name.startswith("cmdstat_eval")}

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


class ReplyTimeout(unittest.TestCase):
    """One timer per connection watches the oldest unanswered call; the
    timeout itself is txredisapi's (every call behind the late one fails
    too, and the connection is aborted, to be made again)."""

    def setUp(self) -> None:
        self.redis, self.store = redis_with_store(self, "herd-timeout-", timeout=1.0, own=True)

    @inlineCallbacks
    def test_calls_in_flight_share_one_timer(self) -> Any:
        yield self.store.get(b"nobody")  # connected
        before = len(reactor.getDelayedCalls())
        calls = [self.store.get(b"c%d" % n) for n in range(100)]
        assert len(reactor.getDelayedCalls()) <= before + 1
        yield gatherResults(calls)
        yield self.store.get(b"nobody")  # the timer is set again, once

    @inlineCallbacks
    def test_a_late_call_fails_with_every_call_behind_it_then_the_store_reconnects(self) -> Any:
        yield self.store.get(b"nobody")
        before = self.store_connection()
        self.redis.pause()  # connection open, no answers
        started = time.monotonic()
        first = self.store.get(b"first")
        yield deferLater(reactor, 0.5, lambda: None)
        second = self.store.get(b"second")  # sent half a timeout later
        errors = []
        for call in (first, second):
            try:
                yield call
            except StoreUnavailable as err:
                errors.append(str(err))
        waited = time.monotonic() - started
        assert errors == ["Redis hget: Not received Redis response in 1.0 seconds"] * 2, errors
        assert 0.9 <= waited < 1.4, waited  # the first call's timeout, not the second's
        self.redis.resume()
        yield deferLater(reactor, 1.0, lambda: None)
        assert (yield self.store.get(b"nobody")) is None
        assert self.store_connection() != before  # the late connection was aborted

    @inlineCallbacks
    def test_a_late_store_batch_times_out_too(self) -> Any:
        yield self.store.store_if_newer(at_record(1, "1700000000.1", "A"))  # the script is known: EVALSHA
        self.redis.pause()
        started = time.monotonic()
        try:
            yield self.store.store_if_newer(at_record(2, "1700000000.2", "A"))
        except StoreUnavailable as err:
            assert str(err) == "Redis eval: Not received Redis response in 1.0 seconds", err
        else:
            raise AssertionError("a batch Redis did not answer was stored")
        assert 0.9 <= time.monotonic() - started < 1.4
        self.redis.resume()
        yield deferLater(reactor, 1.0, lambda: None)
        # Whether Redis ran the late batch once resumed is not known to the
        # store (it was not acknowledged); the store serves again.
        assert (yield self.store.store_if_newer(at_record(3, "1700000000.3", "A"))).stored

    def store_connection(self) -> str:
        """The id of the store's connection (the one that is not this CLIENT LIST's)."""
        clients = self.redis.call("CLIENT", "LIST").decode().splitlines()
        [store] = [line for line in clients if "cmd=client|list" not in line]
        return store.split()[0]
