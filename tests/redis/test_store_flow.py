"""RedisStore's flow control and failure handling against a real redis-server:
a burst of records never queues inside Redis deeper than the reply timeout,
client records go before a peer's backlog, a full batch goes to Redis at once, and once Redis has not answered
for a timeout, calls stop waiting a whole timeout each."""

from __future__ import annotations

import gc
import subprocess
import sys
import time
from functools import partial
from typing import Any, cast

from fakes import at_record
from harness import REPO, discard_redis, free_port, fresh_redis, redis_with_store, shared_redis, until
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, succeed
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.trial import unittest

from config.schema import RedisAddress
from herd.wire.peer import LogStep, Position
from storage import store as store_module
from storage.batch import StoreResult
from storage.redis_client import ReconnectingFactory
from storage.store import (
    MAX_BATCH,
    MAX_IN_FLIGHT,
    RECOVERY_GRACE,
    SEND_AT,
    RedisStore,
    StoreUnavailable,
)


def record(client: int, server: bytes = b"B") -> Any:
    return at_record(client, f"1700000000.{client}", server.decode())


class Burst(unittest.TestCase):
    def setUp(self) -> None:
        self.redis, self.store = redis_with_store(self, "herd-flow-", timeout=5.0, own=True)

    @inlineCallbacks
    def test_a_burst_is_stored_without_timeouts_and_clients_go_first(self) -> Any:
        yield self.store.get(b"nobody")  # connected
        # 20 batches sent at once would queue inside Redis, and the last ones
        # would wait for every one before them (a timeout on a slow disk).
        most_in_flight = [0]
        flush = self.store._flush_batch

        def flush_counted() -> None:
            flush()
            most_in_flight[0] = max(most_in_flight[0], len(self.store._sent_at))

        self.store._flush_batch = flush_counted  # type: ignore[method-assign]
        fired: list[str] = []

        def answered(result: StoreResult, kind: str) -> StoreResult:
            fired.append(kind)
            return result

        peers = [self.store.store_if_newer(record(i), tie_break=True, source=b"P")
                 for i in range(20 * MAX_BATCH)]
        for d in peers:
            d.addCallback(answered, "peer")
        client = self.store.store_if_newer(record(10**6, b"A"))
        client.addCallback(answered, "client")
        results = yield DeferredList([*peers, client], consumeErrors=True)
        failures = [r for ok, r in results if not ok]
        assert failures == [], failures[0]
        assert all(r.stored for _, r in results)
        assert 1 < most_in_flight[0] <= MAX_IN_FLIGHT
        # At most the batches already sent were answered before the client's.
        assert fired.index("client") <= MAX_IN_FLIGHT * MAX_BATCH
        assert self.store.backlog == 0


class SentAtOnce(unittest.TestCase):
    def setUp(self) -> None:
        self.redis, self.store = redis_with_store(self, "herd-at-once-", timeout=5.0)

    @inlineCallbacks
    def test_records_reaching_send_at_go_to_redis_in_the_middle_of_the_turn(self) -> Any:
        yield self.store.get(b"nobody")  # connected
        yield deferLater(reactor, 0, lambda: None)  # out of the Redis connection's read
        connection = self.store._connection()
        written_now: list[Any] = []
        reactor.write_now = written_now.append  # type: ignore[attr-defined] # as herd.reactor's
        self.addCleanup(delattr, reactor, "write_now")
        fewer = self.store.store_group([record(i) for i in range(SEND_AT - 1)])
        assert (len(self.store._sent_at), written_now) == (0, [])  # at the end of the turn
        more = self.store.store_if_newer(record(SEND_AT))
        assert (len(self.store._sent_at), self.store.backlog) == (1, 0)  # one batch of all, now
        assert written_now == [connection.transport]
        group, one = yield DeferredList([fewer, more], fireOnOneErrback=True)
        assert all(result.stored for result in group[1]) and one[1].stored
        groups = [[record(1000 + SEND_AT * g + i) for i in range(SEND_AT)] for g in range(MAX_IN_FLIGHT + 1)]
        later = [self.store.store_group(group) for group in groups[:MAX_IN_FLIGHT]]
        assert (len(self.store._sent_at), self.store.backlog) == (MAX_IN_FLIGHT, 0)
        later.append(self.store.store_group(groups[-1]))  # no slot: waits for an answer
        assert (len(self.store._sent_at), self.store.backlog) == (MAX_IN_FLIGHT, SEND_AT)
        results = yield DeferredList(later, fireOnOneErrback=True)
        assert all(result.stored for _, stored in results for result in stored)

    @inlineCallbacks
    def test_records_queued_while_the_connection_reads_a_reply_are_written_after_the_read(self) -> Any:
        # Found by a review: written at once inside the Redis connection's own
        # read, a failed write would close it under replies Redis had sent.
        yield self.store.get(b"nobody")  # connected
        yield deferLater(reactor, 0, lambda: None)  # out of the Redis connection's read
        written_now: list[Any] = []
        reactor.write_now = written_now.append  # type: ignore[attr-defined] # as herd.reactor's
        self.addCleanup(delattr, reactor, "write_now")
        inside: list[Deferred[Any]] = []

        def queue_more(result: StoreResult) -> StoreResult:
            inside.append(self.store.store_group([record(100 + i) for i in range(SEND_AT)]))
            return result

        first = self.store.store_if_newer(record(1)).addCallback(queue_more)
        assert (yield first).stored
        assert len(inside) == 1 and written_now == []  # sent (in order), written when the read is over
        group = yield inside[0]
        assert all(result.stored for result in group)


# A node's store on the node's reactor, in a process of its own: queues
# ``count`` records from a timed call (not inside a read), then, without
# returning to the reactor, waits up to a second for Redis to hold the last.
_ON_THE_NODE_REACTOR = """
import sys, time
from herd.reactor import install
reactor = install()
from config.schema import RedisAddress
from herd.tools.harness import Resp
from herd.wire.client import parse_at_line
from storage.store import RedisStore
port, prefix, count = int(sys.argv[1]), sys.argv[2].encode(), int(sys.argv[3])
store = RedisStore(reactor, RedisAddress(f"redis://127.0.0.1:{port}/0", "127.0.0.1", port), prefix, 5.0)
def queue():
    try:
        store.store_group([parse_at_line(b"AT B +0.100000000 c%d +1+1 1700000000.%d" % (i, i))
                           for i in range(count)]).addErrback(lambda _: None)  # lost as it stops
        deadline = time.monotonic() + 1.0
        with Resp(port) as redis:
            while not redis.call("EXISTS", prefix + b"client:c%d" % (count - 1)):
                if time.monotonic() > deadline:
                    print("at the end of the turn")
                    break
                time.sleep(0.005)
            else:
                print("in the middle of the turn")
    finally:
        reactor.stop()
store.start()
store.get(b"nobody").addCallback(lambda _: reactor.callLater(0, queue))
reactor.run()
"""


def test_on_the_node_reactor_a_full_batch_reaches_redis_in_the_middle_of_the_turn() -> None:
    server = shared_redis()

    def sent(count: int) -> str:
        prefix = f"herd-now-{count}-{time.monotonic_ns()}:"
        argv = [sys.executable, "-c", _ON_THE_NODE_REACTOR, str(server.port), prefix, str(count)]
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert sent(SEND_AT) == "in the middle of the turn"
    assert sent(SEND_AT - 1) == "at the end of the turn"


@inlineCallbacks
def failure_after(store: RedisStore) -> Any:
    """Seconds until a store call fails (it must)."""
    started = time.monotonic()
    try:
        yield store.store_if_newer(record(1, b"A"))
    except StoreUnavailable:
        return time.monotonic() - started
    raise AssertionError("stored while Redis was stopped")


class Unanswered(unittest.TestCase):
    def setUp(self) -> None:
        self.redis, self.store = redis_with_store(self, "herd-stuck-", timeout=3.0, own=True)

    def tearDown(self) -> None:
        if self.redis.proc is not None and self.redis.proc.poll() is None:
            self.redis.resume()

    @inlineCallbacks
    def test_once_redis_has_not_answered_for_a_timeout_calls_wait_only_briefly(self) -> Any:
        yield self.store.get(b"nobody")  # connected
        self.redis.pause()  # stuck: connections open, no answers
        first = yield failure_after(self.store)
        assert 2.9 <= first < 4.5, first
        for _ in range(3):  # a client pipelining requests waits this long for each
            later = yield failure_after(self.store)
            assert later < RECOVERY_GRACE + 0.5 < 3.0, later  # not a whole timeout each
        self.redis.resume()
        yield deferLater(reactor, 0.5, lambda: None)
        result = yield self.store.store_if_newer(record(2, b"A"))
        assert result.stored


class Gone(unittest.TestCase):
    def setUp(self) -> None:
        self.redis, self.store = redis_with_store(self, "herd-gone-", timeout=1.0, own=True)
        # Far from the backoff's cap (0.5 s): the two outcomes seconds apart on a busy machine.
        self.patch(store_module, "RECOVERY_GRACE", 5.0)

    @inlineCallbacks
    def test_once_redis_is_gone_for_a_timeout_calls_fail_at_the_next_attempt_to_connect(self) -> Any:
        # Found by a review against SPEC 4: a client pipelining WHATSATs while
        # Redis was down got one '? <line>' every 1.25 s (the 8th after 12 s).
        yield self.store.get(b"nobody")  # connected
        self.redis.kill()
        first = yield failure_after(self.store)
        assert 0.9 <= first < 2.5, first  # the timeout
        for _ in range(3):
            later = yield failure_after(self.store)
            # the next connection attempt's refusal: within the backoff's cap (0.5 s, jitter)
            assert later < 2.5 < store_module.RECOVERY_GRACE, later
        self.redis.start()
        started = time.monotonic()
        result = yield self.store.store_if_newer(record(2, b"A"))  # the next attempt connects
        assert result.stored and time.monotonic() - started < 2.5



class Reconnects(unittest.TestCase):
    def setUp(self) -> None:
        self.redis, self.store = redis_with_store(self, "herd-reconnects-", timeout=2.0, own=True)

    @inlineCallbacks
    def test_a_lost_connection_is_not_kept(self) -> Any:
        """Found by a review: every reconnect left the lost connection in
        txredisapi's queue of idle ones, for as long as the node ran."""
        said: list[str] = []
        observer = cast(ILogObserver, lambda event: said.append(formatEvent(event)))
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        factory = self.store._factory
        for n in range(5):
            yield self.store.get(b"nobody")  # connected
            yield until(lambda: self.store.serving, what="serving")  # (its checks done: it served)
            lost = factory.pool[0]
            self.redis.call("CLIENT", "KILL", "TYPE", "normal")
            yield until(partial(_replaced, factory, lost), what="reconnected")
            assert lost not in factory.connectionQueue.pending, n
        assert len(factory.connectionQueue.pending) <= len(factory.pool)
        # Each of these connections served: each loss is said (a Redis that
        # never answers, whose connections are lost before they serve, is
        # logged once a minute: Throttle).
        losses = [line for line in said if line.startswith("lost the connection to Redis")]
        assert len(losses) == 5, losses



def _replaced(factory: ReconnectingFactory, lost: Any) -> bool:
    return factory.pool[:1] not in ([], [lost])


class Transport:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:  # noqa: N802
        self.calls.append("pause")

    def resumeProducing(self) -> None:  # noqa: N802
        self.calls.append("resume")


class PeerConn:
    """A peer connection (herd.peer.links.PeerConnection) whose transport records pauses and resumes."""

    connected = 1
    peer_name: bytes | None = b"P"
    lines_in = lines_out = beat_in = beat_out = quiet_in = quiet_out = 0

    def __init__(self) -> None:
        self.transport = Transport()

    def send_line(self, line: bytes) -> None:
        pass

    def send_lines(self, lines: list[bytes]) -> None:
        pass

    def flush_lines(self) -> None:
        pass

    def writable(self) -> Deferred[None]:
        return succeed(None)

    def end_writable(self) -> None:
        pass

    closing = False

    def close(self) -> None:
        self.closing = True


class Backpressure(unittest.TestCase):
    """A node stops reading from its peers while many of their records wait for
    its Redis (they wait in the peers' send buffers instead), and reads again
    once the backlog has drained."""

    def setUp(self) -> None:
        from herd import node as node_module
        from herd.node import Node
        from herd.peer.links import PeerLinks

        self.redis, self.store = redis_with_store(self, "herd-backpressure-")
        self.patch(node_module, "BACKLOG_HIGH", 50)
        self.patch(node_module, "BACKLOG_LOW", 10)
        self.patch(store_module, "SEND_AT", 10**6)  # the turn's records wait for its end
        self.node = Node(b"A", self.store, None, PeerLinks([b"P"]), reactor)  # type: ignore[arg-type]

    @inlineCallbacks
    def test_reading_pauses_at_the_high_mark_and_resumes_below_the_low_one(self) -> Any:
        yield self.store.get(b"nobody")  # connected
        conn = PeerConn()
        for i in range(200):  # one reactor turn: nothing is sent to Redis yet
            self.node.handle_peer_lines([b"R AT B +0.100000000 c%d +1+1 1700000000.5" % i], b"P", conn)
        assert conn.transport.calls == ["pause"]
        yield self.store.when_backlog_below(1)
        yield until(lambda: conn.transport.calls == ["pause", "resume"], what="reading resumed")
        yield until(lambda: self.redis.hgetall("herd:summary").get(b"clients") == b"200", what="200 stored")


class FailedBatches(unittest.TestCase):
    def setUp(self) -> None:
        self.redis, self.store = redis_with_store(self, "herd-failq-", timeout=1.0, own=True)

    @inlineCallbacks
    def test_a_failed_batch_fails_everything_queued_behind_it_at_once(self) -> Any:
        yield self.store.get(b"nobody")  # connected
        waiting = [self.store.store_if_newer(record(i), tie_break=True, source=b"P") for i in range(20_000)]
        offset = self.store.set_offset_in_order(b"P", Position(b"E", b"5-0"))
        yield deferLater(reactor, 0, lambda: None)  # the first batches are sent
        self.redis.kill()
        started = time.monotonic()
        results = yield DeferredList([*waiting, offset], consumeErrors=True)
        took = time.monotonic() - started
        stored = sum(1 for ok, r in results[:-1] if ok and r.stored)
        assert stored < 20_000 and not results[-1][0]  # something was lost, so the offset write failed
        assert took < 3.0, took  # not one timeout per batch of the queue

    @inlineCallbacks
    def test_an_offset_set_in_order_lands_before_updates_chained_on_it(self) -> Any:
        # Found by a black-box audit: a SYNC-END's offset write reached Redis
        # after the live updates the peer chained on it, which then failed to
        # advance the offset and made the node pull (and get) them all again.
        yield self.store.get(b"nobody")  # connected
        yield self.store.set_peer_offset(b"P", Position(b"E", b"1-0"))
        backlog = [self.store.store_if_newer(record(i), tie_break=True, source=b"P") for i in range(3000)]
        at, after = Position(b"OTHER", b"5-0"), Position(b"OTHER", b"6-0")
        offset = self.store.set_offset_in_order(b"P", at)
        chained = self.store.advance_offset(LogStep(b"P", at, after))
        yield DeferredList(backlog)
        assert (yield offset).advanced and (yield chained).advanced
        assert self.redis.hgetall("herd:peer:P") == {b"epoch": b"OTHER", b"pos": b"6-0"}

    @inlineCallbacks
    def stored_in_order(self, *queued: tuple[str, int]) -> Any:
        """Queue (kind, count) groups in one reactor turn; the kinds in the order stored."""
        order: list[str] = []

        def stored(result: StoreResult, kind: str) -> StoreResult:
            order.append(kind)
            return result

        waiting: list[Deferred[StoreResult]] = []
        for kind, count in queued:
            for _ in range(count):
                i = len(waiting)
                d = (self.store.store_if_newer(record(i, b"A")) if kind == "client" else
                     self.store.store_if_newer(record(i), tie_break=True, source=b"P"))
                waiting.append(d.addCallback(stored, kind))
        yield DeferredList(waiting)
        return order

    @inlineCallbacks
    def test_each_batch_leaves_room_for_older_peer_records(self) -> Any:
        yield self.store.get(b"nobody")  # connected
        self.patch(store_module, "SEND_AT", 10**6)  # both queues wait, as while every batch slot is busy
        order = yield self.stored_in_order(("peer", 600), ("client", 1500))
        first_batch = order[:MAX_BATCH]
        assert first_batch.count("peer") >= MAX_BATCH // 2 and first_batch.count("client") >= MAX_BATCH // 2

    @inlineCallbacks
    def test_a_peer_record_never_overtakes_an_older_client_record(self) -> Any:
        # A peer's K line must find stored the client updates this node
        # forwarded to it before storing them (found by a black-box audit:
        # it overtook them, and the failed K check made the peer send the
        # node's own updates back).
        yield self.store.get(b"nobody")  # connected
        order = yield self.stored_in_order(("client", 1500), ("peer", 1), ("client", 10))
        assert order.index("peer") >= 1500


class Groups(unittest.TestCase):
    """store_clients: the records of one group are stored together, in order,
    with the records queued around them."""

    def setUp(self) -> None:
        self.redis, self.store = redis_with_store(self, "herd-groups-")

    @inlineCallbacks
    def test_a_group_fires_once_with_each_records_result_in_order(self) -> Any:
        yield self.store.get(b"nobody")  # connected
        newer, older = at_record(7, "1700000002", "A"), at_record(7, "1700000001", "A")
        before = self.store.store_if_newer(record(1, b"A"))
        records = [record(2, b"A"), newer, older, record(3, b"A")]
        group = self.store.store_group(records)
        assert self.store.backlog == 5  # records, not calls
        after = self.store.store_if_newer(record(4), tie_break=True, source=b"P")
        first, results, last = yield DeferredList([before, group, after], fireOnOneErrback=True)
        assert [r.stored for r in results[1]] == [True, True, False, True]
        entries = [first[1].position, *(r.position for r in results[1] if r.stored), last[1].position]
        assert [e.entry for e in entries] == sorted(e.entry for e in entries)  # logged in call order
        assert results[1][1].previous == results[1][0].position  # chained within the group
        assert self.redis.hgetall(self.store.keys.client(b"c7"))[b"time"] == b"1700000002"

    @inlineCallbacks
    def test_a_group_larger_than_a_batch_is_never_split(self) -> Any:
        yield self.store.get(b"nobody")  # connected
        peers = [self.store.store_if_newer(record(i), tie_break=True, source=b"P") for i in range(10)]
        records = [record(100 + i, b"A") for i in range(MAX_BATCH + 10)]
        group = self.store.store_group(records)
        results = yield group
        assert len(results) == MAX_BATCH + 10 and all(r.stored for r in results)
        assert len({r.position.epoch for r in results}) == 1
        yield DeferredList(peers, fireOnOneErrback=True)
        assert self.store.backlog == 0


    @inlineCallbacks
    def test_a_batch_larger_than_what_lua_can_unpack_is_stored(self) -> Any:
        # Found by a review of groups: a read of thousands of short IAMATs made
        # a batch whose GEOADD and RPUSH took more arguments than Lua's
        # unpack() allows (about 8,000), and every record of it was refused.
        yield self.store.get(b"nobody")  # connected
        records = [record(i, b"A") for i in range(9000)]
        results = yield self.store.store_group(records)
        assert all(r.stored for r in results)
        assert self.redis.call("ZCARD", self.store.keys.geo) == 9000
        assert self.redis.call("LLEN", self.store.keys.journal) == 9000


class WhyUnreachable(unittest.TestCase):
    """A call that gives up says why the store could not connect."""

    @inlineCallbacks
    def refusal(self, address: RedisAddress) -> Any:
        store = RedisStore(reactor, address, b"herd:", timeout=0.5)
        store.start()
        self.addCleanup(store.stop)
        try:
            yield store.get(b"anyone")
        except StoreUnavailable as err:
            return str(err)
        raise AssertionError("answered")

    @inlineCallbacks
    def test_nothing_listening(self) -> Any:
        port = free_port()
        why = yield self.refusal(RedisAddress(f"redis://127.0.0.1:{port}/0", "127.0.0.1", port))
        assert f"Redis at 127.0.0.1:{port} has not answered for 0.5 s" in why, why
        assert "(last connection attempt: " in why and "refused" in why, why

    @inlineCallbacks
    def test_wrong_password(self) -> Any:
        redis = fresh_redis("herd-auth-")
        self.addCleanup(discard_redis, redis)
        redis.call("CONFIG", "SET", "requirepass", "right")
        why = yield self.refusal(RedisAddress(redis.url, "127.0.0.1", redis.port, password="wrong"))
        assert "could not auth" in why, why

    def test_a_failed_set_up_leaves_no_unhandled_error(self) -> None:
        """txredisapi fails the factory's own Deferred, which nobody waits on."""
        failures: list[dict[str, Any]] = []

        def failed(event: dict[str, Any]) -> None:
            if "log_failure" in event:
                failures.append(event)

        observer = cast(ILogObserver, failed)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        refused: list[str] = []
        factory = ReconnectingFactory(reactor, lambda: None, refused.append, lambda: None, uuid="x",
                                       dbid=None, poolsize=1, isLazy=True, charset=None, password="p")
        factory.connectionError("Redis error: could not auth: WRONGPASS")
        del factory
        gc.collect()
        assert refused == ["could not auth: WRONGPASS"]
        assert failures == [], failures  # no "Unhandled error in Deferred"


class Stopping(unittest.TestCase):
    @inlineCallbacks
    def test_records_waiting_when_the_store_stops_fail_at_once(self) -> Any:
        """Review: stop() left a scheduled flush behind, which then waited a
        whole timeout for a connection that was gone."""
        redis = fresh_redis("herd-stop-")
        self.addCleanup(discard_redis, redis)
        store = RedisStore(reactor, RedisAddress(redis.url, "127.0.0.1", redis.port), b"herd:", timeout=3.0)
        store.start()
        yield store.get(b"nobody")  # connected
        waiting = store.store_if_newer(record(1, b"A"))
        started = time.monotonic()
        yield store.stop()
        try:
            yield waiting
        except StoreUnavailable as err:
            assert "stopped" in str(err)
        else:
            raise AssertionError("stored after stop()")
        assert time.monotonic() - started < 1.0
