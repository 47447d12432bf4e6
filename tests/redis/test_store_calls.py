"""How RedisStore's calls reach Redis: txredisapi's protocol with its
per-call costs cut (storage.redis_client.RedisProtocol) sends the same bytes, the
store's function library is loaded once per connection under a name that
tells its version and again once Redis lost it (FUNCTION FLUSH), and a call
Redis does not answer times out as with txredisapi's own timers."""

from __future__ import annotations

import hashlib
import time
from functools import partial
from typing import Any

import txredisapi
from fakes import at_record
from harness import redis_with_store, until
from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from herd.wire.peer import Position
from storage.redis_client import REREAD, FunctionCall, RedisProtocol
from storage.scripts import STORE_BATCH
from storage.store import StoreUnavailable


class Encoding(unittest.TestCase):
    def test_commands_are_the_bytes_txredisapi_sends(self) -> None:
        ours, theirs = RedisProtocol(charset=None), txredisapi.RedisProtocol(charset=None)
        for args in [("PING",), ("EVALSHA", "ab" * 20, 6, b"herd:geo", b"", b"a\r\nb\tc" * 100),
                     ("HSET", b"k", "f\u00e9", bytearray(b"v"), 1.5, -7), ("GET", b"\x00\xff")]:
            assert ours._build_command(*args) == theirs._build_command(*args), args

    def test_a_function_call_is_the_fcall_txredisapi_sends(self) -> None:
        theirs = txredisapi.RedisProtocol(charset=None)
        call = FunctionCall(LIBRARY, b"answer", [b"herd:geo", b"herd:journal"], [b"herd:"])
        for args in ([], [b"1000", b"", b"a\r\nb\tc" * 100]):
            assert call.command(args) == theirs._build_command(
                "FCALL", call.name, 2, b"herd:geo", b"herd:journal", b"herd:", *args)

    def test_the_library_and_function_names_tell_the_files_version(self) -> None:
        call = FunctionCall(LIBRARY, b"answer", [], [])
        version = hashlib.sha1(LIBRARY).hexdigest()[:12].encode()
        assert call.name == b"answer_" + version
        assert call.library == LIBRARY.replace(b"name=lib", b"name=lib_" + version).replace(
            b"'answer'", b"'answer_" + version + b"'")

    def test_a_file_that_does_not_register_the_function_once_is_refused(self) -> None:
        for source in (b"return 1", LIBRARY.replace(b"answer", b"other"),
                       LIBRARY + b"redis.register_function('answer', function() return 2 end)\n"):
            with self.assertRaises(ValueError):
                FunctionCall(source, b"answer", [], [])


def first_position_after(redis: Any, stored: int) -> Position:
    """The log position of the ``stored``-th record in this Redis's journal."""
    return Position(redis.call("GET", b"herd:journal:epoch"), b"0-%d" % stored)


# A library of one function, as FunctionCall takes it.
LIBRARY = b"#!lua name=lib\nredis.register_function('answer', function(keys, args) return 42 end)\n"


class Functions(unittest.TestCase):
    def setUp(self) -> None:
        self.redis, self.store = redis_with_store(self, "herd-calls-", own=True)

    def calls(self) -> dict[str, str]:
        """Calls and failed calls of FCALL and FUNCTION LOAD: "<calls>/<failed>"."""
        stats = self.redis.info("commandstats")
        fields = {name: dict(part.split("=") for part in value.split(",")) for name, value in stats.items()}
        return {name: f"{f['calls']}/{f['failed_calls']}" for name, f in fields.items()
                if name in ("cmdstat_fcall", "cmdstat_function|load")}

    @inlineCallbacks
    def test_the_library_is_loaded_once_per_connection_and_again_once_redis_lost_it(self) -> Any:
        first = yield self.store.store_if_newer(at_record(1, "1700000000.1", "A"))
        second = yield self.store.store_if_newer(at_record(2, "1700000000.2", "A"))
        assert first.stored and second.stored
        assert self.calls() == {"cmdstat_fcall": "2/0", "cmdstat_function|load": "1/0"}
        version = hashlib.sha1(STORE_BATCH).hexdigest()[:12].encode()
        [library] = self.redis.call("FUNCTION", "LIST")
        assert library[1] == b"herd_store_" + version
        assert library[5][0][1] == b"herd_store_batch_" + version
        self.redis.call("FUNCTION", "FLUSH")
        yield self.fails_not_found(self.store.store_if_newer(at_record(3, "1700000000.3", "A")))
        fourth = yield self.store.store_if_newer(at_record(4, "1700000000.4", "A"))
        assert fourth.stored  # the library loaded again, then its FCALL
        assert self.calls() == {"cmdstat_fcall": "4/1", "cmdstat_function|load": "2/0"}
        assert self.redis.call("HGET", b"herd:client:c3", b"time") is None
        assert self.redis.call("HGET", b"herd:client:c4", b"time") == b"1700000000.4"

    @inlineCallbacks
    def test_batches_in_flight_when_redis_lost_the_library_all_fail_and_none_is_sent_again(self) -> Any:
        # Sent again one by one as their replies came, a newer batch could go
        # ahead of the older ones (found by a review): none is.
        yield self.store.store_if_newer(at_record(1, "1700000000.1", "A"))
        self.redis.call("FUNCTION", "FLUSH")
        self.redis.pause()
        calls = yield self.batches_in_flight(2, 3, 4)
        self.redis.resume()
        for call in calls:
            yield self.fails_not_found(call)
        assert self.calls()["cmdstat_fcall"] == "4/3"
        assert all(self.redis.call("EXISTS", b"herd:client:c%d" % n) == 0 for n in range(2, 5))
        fifth = yield self.store.store_if_newer(at_record(5, "1700000000.5", "A"))
        assert fifth.stored and fifth.previous == first_position_after(self.redis, 1)

    @inlineCallbacks
    def test_batches_sent_while_a_load_is_unanswered_report_its_refusal(self) -> Any:
        # Found by a review: the batch after the one carrying the load was
        # answered "Function not found" (FCALL is not refused for OOM), not OOM.
        yield self.store.store_if_newer(at_record(1, "1700000000.1", "A"))
        self.redis.call("FUNCTION", "FLUSH")
        yield self.fails_not_found(self.store.store_if_newer(at_record(2, "1700000000.2", "A")))
        self.redis.call("CONFIG", "SET", "maxmemory", "1")  # every write refused: OOM
        self.redis.pause()
        calls = yield self.batches_in_flight(3, 4)  # the first carries the load
        self.redis.resume()
        for call in calls:
            yield self.refused(call, "OOM ")
        self.redis.call("CONFIG", "SET", "maxmemory", "0")
        assert (yield self.store.store_if_newer(at_record(5, "1700000000.5", "A"))).stored

    @inlineCallbacks
    def test_a_new_connection_loads_the_library_once_and_redis_writes_nothing(self) -> Any:
        yield self.store.store_if_newer(at_record(1, "1700000000.1", "A"))
        made = self.store.connections_made
        self.store_connection().transport.loseConnection()  # the next connection loads it again
        yield until(lambda: self.store.connections_made > made, "the store to reconnect")
        for n in (2, 3):
            assert (yield self.store.store_if_newer(at_record(n, f"1700000000.{n}", "A"))).stored
        # The second connection's load: answered "already exists" (a failed call), once.
        assert self.calls() == {"cmdstat_fcall": "3/0", "cmdstat_function|load": "2/1"}
        assert len(self.redis.call("FUNCTION", "LIST")) == 1

    @inlineCallbacks
    def test_a_load_redis_refuses_is_the_error_reported_and_the_next_call_loads_again(self) -> Any:
        yield self.store.get(b"nobody")  # connected
        broken = FunctionCall(LIBRARY.replace(b"return 42", b"return ("), b"answer", [], [])
        for attempt in (1, 2):
            try:
                yield self.store_connection().call_function(broken, [])
            except txredisapi.ResponseError as err:
                assert "Error compiling function" in str(err), err  # not the FCALL's "Function not found"
            else:
                raise AssertionError("a library Redis refused was called")
            assert self.calls() == {"cmdstat_fcall": f"{attempt}/{attempt}",
                                    "cmdstat_function|load": f"{attempt}/{attempt}"}

    @inlineCallbacks
    def batches_in_flight(self, *clients: int) -> Any:
        """Store a record for each of ``clients``, each in a batch of its own,
        and return their Deferreds once every batch was sent."""
        calls = []
        for n in clients:
            sent = self.store._batches_sent + 1
            calls.append(self.store.store_if_newer(at_record(n, f"1700000000.{n}", "A")))
            yield until(partial(self.batches_sent, sent), "a store batch to be sent", every=0.001)
        return calls

    def batches_sent(self, count: int) -> bool:
        return bool(self.store._batches_sent >= count)

    def fails_not_found(self, call: Any) -> Any:
        return self.refused(call, "ERR Function not found: herd_store_batch_")

    @inlineCallbacks
    def refused(self, call: Any, error: str) -> Any:
        """Wait for ``call`` to fail with a Redis error starting with ``error``."""
        try:
            yield call
        except txredisapi.ResponseError as err:
            assert str(err).startswith(error), err
        else:
            raise AssertionError(f"stored, not refused with {error!r}")

    def store_connection(self) -> Any:
        return self.store._connection()


def test_a_reply_timer_that_ran_late_reads_the_replies_first() -> None:
    """Found by a review: a node stopped (SIGSTOP) for longer than the reply
    timeout ran its timers before reading the replies that came meanwhile,
    took Redis for silent, and dropped a healthy connection."""
    clock, transport = Clock(), StringTransport()
    conn = RedisProtocol(charset=None, replyTimeout=1.0)
    conn.clock = clock
    conn.makeConnection(transport)
    answered: list[Any] = []
    conn.execute_command("GET", b"k").addBoth(answered.append)
    clock.advance(6.0)  # the process did not run for 6 s: the timer runs 5 s late
    conn.dataReceived(b"$-1\r\n")  # the reply, read by the reactor's next poll
    clock.advance(REREAD)
    assert answered == [None] and not transport.disconnecting
    late: list[Any] = []
    conn.execute_command("GET", b"k").addErrback(lambda failure: late.append(failure.value))
    clock.advance(6.0)
    clock.advance(REREAD + 5.0)  # late again (a reactor late at every turn): looked again once only
    assert isinstance(late[0], txredisapi.TimeoutError) and transport.disconnecting


class ReplyTimeout(unittest.TestCase):
    """One timer per connection watches the oldest unanswered call; the
    timeout itself is txredisapi's (every call behind the late one fails
    too, and the connection is aborted, to be made again)."""

    def setUp(self) -> None:
        self.redis, self.store = redis_with_store(self, "herd-timeout-", timeout=2.0, own=True)

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
        yield deferLater(reactor, 1.0, lambda: None)
        second = self.store.get(b"second")  # sent half a timeout later
        errors = []
        for call in (first, second):
            try:
                yield call
            except StoreUnavailable as err:
                errors.append(str(err))
        waited = time.monotonic() - started
        assert errors == ["Redis hget: Not received Redis response in 2.0 seconds"] * 2, errors
        assert 1.9 <= waited < 2.9, waited  # the first call's timeout (2 s), not the second's (3 s)
        self.redis.resume()
        yield deferLater(reactor, 1.0, lambda: None)
        assert (yield self.store.get(b"nobody")) is None
        assert self.store_connection() != before  # the late connection was aborted

    @inlineCallbacks
    def test_a_late_store_batch_times_out_too(self) -> Any:
        yield self.store.store_if_newer(at_record(1, "1700000000.1", "A"))  # the library is loaded
        self.redis.pause()
        started = time.monotonic()
        try:
            yield self.store.store_if_newer(at_record(2, "1700000000.2", "A"))
        except StoreUnavailable as err:
            assert str(err) == "Redis fcall: Not received Redis response in 2.0 seconds", err
        else:
            raise AssertionError("a batch Redis did not answer was stored")
        assert 1.9 <= time.monotonic() - started < 4
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
