"""The node's storage: one small interface over txredisapi.

Contract of every call: its Deferred fires with the answer once Redis has
acknowledged the command, or fails with :class:`StoreUnavailable` within
about ``timeout`` seconds when Redis is unreachable or stuck. The store
reconnects by itself (backoff capped at half a second), so a node recovers
within a second or two of Redis returning.
"""

from __future__ import annotations

import itertools
import math
import os
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import txredisapi
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from config.schema import RedisAddress
from herd.logs import Throttle
from herd.wire.client import AtRecord, parse_at_line
from herd.wire.peer import ANY_ENTRY, LogStep, Position
from storage import geohash
from storage.batch import (
    KINDS,
    Pending,
    StoreResult,
    batch_stored,
    digest_of,
    digest_part,
    group_blob,
    record_blob,
    xor,
)
from storage.keys import Keys
from storage.redis_client import (
    NOT_SERVING,
    FunctionCall,
    NotingEndpoint,
    ReconnectingFactory,
    RedisProtocol,
    redis_endpoint,
)
from storage.scripts import GEO_SAMPLE, LOG_CHECK, LOG_HEAD, LOG_SINCE, SCAN_RECORDS, SCAN_TIMES, STORE_BATCH

_log = Logger(namespace="herd")


def refused_unrun(failure: Any) -> bool:
    """Whether ``failure`` is Redis refusing a call before running it (out of
    memory, failing to persist, loading, ...: NOT_SERVING), so that nothing
    of it was written; a timeout or a lost connection leaves that unknown."""
    return bool(failure.check(txredisapi.ResponseError)) and failure.getErrorMessage().startswith(NOT_SERVING)


SAMPLE_BLOCK = 4  # consecutive GEO members per block of a sample (see geo_sample.lua)
# Bound of the journal (the update log): about 10 MB; it may grow a tenth
# beyond before its oldest entries are trimmed in one go (store_batch.lua).
LOG_MAX_ENTRIES = 1_000_000
LOG_BOUND = str(LOG_MAX_ENTRIES).encode()
MAX_BATCH = 1000  # records per store_batch.lua call (exceeded only by one group, never split)
# Store batches sent and not yet answered. More wait in the node and join the
# next batch: a burst (a large SYNC answer) then costs a few large Lua calls
# instead of a queue inside Redis deeper than the reply timeout, and a
# client's update is not stuck behind it (see _flush_batch for the order).
# Four keep Redis busy while the node handles the answers of the others (with
# two, one node with no peers answered about 10% fewer IAMATs a second in
# `herd bench`; at most 4 x MAX_BATCH records, well under 0.1 s, wait in Redis).
MAX_IN_FLIGHT = 4
# Records that, once waiting, go to Redis at once (while a batch slot is
# free), in the middle of the reactor's turn, not after it: Redis starts on
# them while the node reads and parses the rest of the turn's requests.
# Sent at the end of the turn, a busy node's whole load went to Redis in one
# batch, and the node waited for Redis, then Redis for the node (with no
# peers, node and Redis each used 0.57 of a core, in turn, on a machine of
# two; docs/BENCHMARKS.md, nineteenth session). Fewer make more Lua calls.
# The price: updates forwarded cut-through in such a turn leave after that
# batch's Python work (see _flush_next_turn); a read of fewer records, as at
# a thousand updates a second, is sent as before.
SEND_AT = 64
SERVING_POLL = 0.1  # seconds between checks whether Redis takes writes again
STALLED = 0.25  # seconds a call may wait for Redis before the store counts as not serving
# Seconds a call waits for Redis to serve again once it has not answered for a
# timeout: over twice the reconnect backoff's cap (a Redis that is back is
# reconnected within it), short enough that a client pipelining requests on
# one connection does not wait a whole timeout per request.
RECOVERY_GRACE = 1.25


class LogChunk(NamedTuple):
    end: Position  # the position after this chunk
    entries: int  # log entries read (fewer than asked: the log is exhausted)
    lines: list[bytes]  # current AT lines of the clients those entries name


EMPTY_DIGEST = b"0000000000000000"  # the digest of no clients


class Summary(NamedTuple):
    """What the summary hash says of the clients held (see Keys.summary)."""

    clients: int
    digest: bytes  # 16 hex digits; EMPTY_DIGEST when no client is held


class PositionSample(NamedTuple):
    total: int  # clients in the GEO set
    points: list[tuple[bytes, float, float]]  # (client id, latitude, longitude), at most the count asked


class StoreUnavailable(Exception):
    """Redis could not be reached, or did not answer in time."""


# Calls named in errors (and so in the event log) as the Redis command they send.
_SHOWN_AS = {"call_function": "fcall"}


class RedisStore:
    """Client records in Redis under the key schema of :mod:`storage.keys`."""

    log = Logger()

    def __init__(self, reactor: IReactorTime, address: RedisAddress, prefix: bytes, timeout: float):
        self._reactor = reactor
        self._address = address
        self._timeout = timeout
        self.keys = Keys(prefix)
        self._waiters: list[Deferred[None]] = []  # calls waiting for a connection
        self._recovery_waiters: list[Deferred[None]] = []  # calls waiting for Redis to serve again
        self._attempt_waiters: list[Deferred[None]] = []  # calls waiting for the next connection attempt
        self.on_connected: list[Callable[[], None]] = []  # on every (re)connection, once Redis serves
        self._checking = False  # a check whether Redis serves is under way
        self._serving_poll: Any = None  # the next check, while Redis does not serve
        self.connections_made = 0  # connections made so far (each may reach a restarted Redis)
        self._serving_now = False
        self._said_not_serving = False  # that check was refused and logged
        self._batch: deque[Pending] = deque()  # from peers
        self._urgent: deque[Pending] = deque()  # from clients
        self._waiting = 0  # records in both queues
        self._arrivals = itertools.count()
        self._batch_call: Any = None
        self._drain_waiters: list[tuple[int, Deferred[None]]] = []  # (backlog below, waiter)
        # When the first call Redis has not answered was made (None once Redis
        # serves again): a timeout after it, calls wait only RECOVERY_GRACE.
        self._failing_since: float | None = None
        self._refused: str | None = None  # why the last connection attempt failed
        self._announced = 0  # the last connection logged as serving
        # A Redis that accepts connections and never answers loses one every few
        # seconds: the first such loss of a minute is logged, the others summed up.
        self._losses = Throttle(
            reactor, _log.warn, "lost the connection to Redis at {host}:{port}, before it served, {n} more "
            "time(s) in the last {window}", limit=1, window=60.0, max_window=60.0,
            host=address.host, port=address.port)
        self._sent_at: deque[float] = deque()  # when each unanswered store batch was sent
        # Store batches are named "<random>-<n>"; each names the one sent before
        # it (b"": none, the chain starting again), see store_batch.lua.
        self._batch_names = os.urandom(6).hex().encode()
        self._batches_sent = 0
        # After a failed batch or a new connection: the chain starts again (a
        # batch naming none) once this many batches are answered (every one
        # sent before), see _batch_failed.
        self._chain_restart: int | None = None
        self._last_batch = b""
        # The journal as this node last knew it: its epoch and how many entries
        # were ever appended to it (check_log); None: not known yet.
        self._log_seen: tuple[bytes, int] | None = None
        self._log_news: str | None = None  # a change a batch showed while Redis is being checked
        # Set when Redis was found emptied, replaced or gone back (its peer
        # offsets may not match what it holds): on_connected's readers act on it.
        self.log_lost = False
        keys = self.keys
        batch_keys = [keys.geo, keys.journal, keys.journal_epoch, keys.summary, keys.journal_base,
                      keys.journal_batch]
        self._store_batch = FunctionCall(STORE_BATCH, b"herd_store_batch", batch_keys, [keys.prefix])
        self.observe: Callable[[float], None] | None = None  # gets each call's latency (s)
        # Gets the reason (the error's first word: OOM, LOADING, MISCONF, ...)
        # of each call Redis refused because it cannot take writes now; not
        # called for the store's own checks whether it serves again.
        self.on_refused: Callable[[str], None] | None = None
        self._factory = ReconnectingFactory(
            reactor, self._connection_ready, self._connection_refused, self._connection_lost,
            # No SELECT for database 0: a new connection is already there.
            uuid=f"{address.host}:{address.port}", dbid=address.db or None, poolsize=1, isLazy=True,
            handler=txredisapi.ConnectionHandler, charset=None, password=address.password,
            replyTimeout=timeout, convertNumbers=False,
        )
        self._redis: Any = self._factory.handler

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        """Start connecting (and reconnecting) in the background."""
        endpoint = redis_endpoint(self._reactor, self._address.host, self._address.port, self._timeout)
        self._factory.startConnecting(NotingEndpoint(endpoint, self._connection_refused,
                                                      f"Redis at {self._address.host}:{self._address.port}"))

    stopped = False  # stop() was called: failures from now on are expected

    def stop(self) -> Deferred[Any]:
        """Close the connections; fires when they are closed. Records still
        waiting to be sent fail at once (StoreUnavailable), and so do calls
        Redis has not answered yet (``stopped`` tells their callers why)."""
        self.stopped = True
        self._losses.close()
        if self._serving_poll is not None and self._serving_poll.active():
            self._serving_poll.cancel()
        if self._batch_call is not None and self._batch_call.active():
            self._batch_call.cancel()
        self._batch_call = None
        waiting = [*self._urgent, *self._batch]
        self._urgent.clear()
        self._batch.clear()
        self._waiting = 0
        for _, done, _, _, _ in waiting:
            done.errback(StoreUnavailable("the store was stopped"))
        return self._factory.disconnect()

    @property
    def address(self) -> RedisAddress:
        return self._address

    @property
    def timeout(self) -> float:
        """Seconds a call waits for Redis's answer."""
        return self._timeout

    @property
    def connected(self) -> bool:
        return bool(self._factory.size)

    @property
    def failing(self) -> bool:
        """A call went unanswered and none has succeeded since (``on_connected``
        runs once Redis serves again)."""
        return self._failing_since is not None

    @property
    def serving(self) -> bool:
        """Connected, Redis took a write since, no call failed since then, and
        no store batch has waited for its answer longer than STALLED. (On the
        hot path: whether an update may be forwarded before it is stored.)"""
        if not (self._serving_now and self.connected):
            return False
        return not self._sent_at or self._reactor.seconds() - self._sent_at[0] < STALLED

    @property
    def answering(self) -> bool:
        """``serving``, and no call at all (the node's status write once a
        second, a read) has waited longer than STALLED for its answer: a
        Redis that stopped answering an idle node is noticed within about a
        second (``/healthz``)."""
        if not self.serving:
            return False
        conn = self._connection()
        since = conn.unanswered_since() if isinstance(conn, RedisProtocol) else None
        return since is None or self._reactor.seconds() - since < STALLED

    # -- verbs -----------------------------------------------------------

    def store_if_newer(self, record: AtRecord, tie_break: bool = False, step: LogStep | None = None,
                       source: bytes = b"", known_newer: bool = False) -> Deferred[StoreResult]:
        """Atomically store ``record`` if its client-time is strictly newer than the
        held one (with ``tie_break``, an equal time with a bytewise larger AT line
        also wins), logging it in the update log. With a log ``step``, the peer's
        offset advances to ``step.pos`` if it stood at ``step.prev``. ``source``
        names the peer the record came from (b"" for a client). ``known_newer``:
        the caller knows it newer than what Redis holds (herd.latest), so it
        will most likely be stored (a hint that saves Redis work, never a
        condition: Redis decides).

        Calls made in one reactor turn go to Redis together, at the end of the
        turn (one Lua call per batch), or at once, with what waits before them,
        when they make SEND_AT records waiting and a batch slot is free;
        applied in call order. Each Deferred fires with its own StoreResult once
        Redis has acknowledged its batch (or fails; when the write to Redis
        fails at once, before this returns)."""
        done: Deferred[StoreResult] = Deferred()
        blob = record_blob(record, KINDS[tie_break][known_newer], step, source)
        self._queue(blob, done, 0, digest_part(record.line) if known_newer else 0,
                    urgent=not source and not step)
        return done

    def store_group(self, records: list[AtRecord], source: bytes = b"",
                    known_newer: list[bool] | None = None) -> Deferred[Sequence[StoreResult]]:
        """store_if_newer for records that arrived together, as one group: from
        clients (``source`` b""), or from a peer (``source`` as for
        store_if_newer; ties broken, no log step); ``known_newer``: each
        record's hint, as for store_if_newer. Stored in order, together;
        fires with their StoreResults in order (a StoredRun when all were
        stored) once Redis has acknowledged them (or fails for all of them).
        One Deferred instead of one per record: a read of many IAMATs, or of
        many forwarded updates, is handled at once."""
        done: Deferred[Sequence[StoreResult]] = Deferred()
        kinds = KINDS[bool(source)]
        known = known_newer or [False] * len(records)
        blob = group_blob(records, [kinds[newer] for newer in known], source)
        digest = digest_of([record.line for record, newer in zip(records, known, strict=True) if newer])
        self._queue(blob, done, len(records), digest, urgent=not source)
        return done

    def advance_offset(self, step: LogStep) -> Deferred[StoreResult]:
        """Advance ``step.peer``'s offset from ``step.prev`` to ``step.pos`` with
        no record, in order with the records stored before it."""
        done: Deferred[StoreResult] = Deferred()
        # No record (six empty fields), a kind, no source, the chain: the step.
        link = (step.peer, step.prev.epoch, step.prev.entry, step.pos.entry)
        self._queue(b"\n\n\n\n\n\n0\n\n%s\n%s\n%s\n%s\n\t" % link, done, 0, 0)
        return done

    @property
    def backlog(self) -> int:
        """Records waiting to be sent to Redis."""
        return self._waiting

    @property
    def batches_answered(self) -> int:
        """Store batches answered (or failed) so far: a read of the summary hash
        made before this last moved may be out of date (herd.admin.view.SummaryReader)."""
        return self._batches_sent - len(self._sent_at)

    def set_offset_in_order(self, peer: bytes, pos: Position) -> Deferred[StoreResult]:
        """Set ``peer``'s offset to ``pos`` after every record queued before this
        call, and before every one queued after it. It fails if any of those
        before it failed: a failed batch fails everything queued behind it."""
        return self.advance_offset(LogStep(peer, Position(pos.epoch, ANY_ENTRY), pos))

    def when_backlog_below(self, limit: int) -> Deferred[None]:
        """Fires once fewer than ``limit`` records wait to be sent to Redis."""
        if self.backlog < limit:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._drain_waiters.append((limit, waiter))
        return waiter

    def _queue(self, blob: bytes, done: Deferred[Any], count: int, digest: int, urgent: bool = False) -> None:
        (self._urgent if urgent else self._batch).append((blob, done, next(self._arrivals), count, digest))
        self._waiting += count or 1
        if self._waiting >= SEND_AT and len(self._sent_at) < MAX_IN_FLIGHT:
            self._send_now()
        else:
            self._schedule_flush()

    def _send_now(self) -> None:
        if self._batch_call is not None:
            self._batch_call.cancel()
        self._flush_batch()
        connection = self._connection()
        if isinstance(connection, RedisProtocol):
            connection.send_now()

    def _schedule_flush(self) -> None:
        if self._batch_call is None and len(self._sent_at) < MAX_IN_FLIGHT:
            self._batch_call = self._reactor.callLater(0, self._flush_next_turn)

    def _flush_next_turn(self) -> None:
        """Build the batch one reactor turn later, after the reactor has written
        what this turn queued: an update forwarded cut-through leaves before
        the Python work of a Lua call, about 0.2 ms sooner per hop (unless
        SEND_AT records made the batch leave at once)."""
        self._batch_call = self._reactor.callLater(0, self._flush_batch)

    def _flush_batch(self) -> None:
        """Send what waits, in batches of at most MAX_BATCH records, while fewer
        than MAX_IN_FLIGHT are unanswered, each queue in arrival order (one Lua
        call per batch, applied in order). Client records may overtake peers'
        but never the other way round: a peer's K line comes after the client
        updates forwarded to it before they were stored. Each batch names the
        one sent before it: Redis takes its log steps only if that one was
        applied (store_batch.lua), so no offset moves past a record of a batch
        that failed on the way. Half of a full batch is kept for peers' records
        older than every waiting client record, so neither queue starves the
        other."""
        self._batch_call = None
        while (self._urgent or self._batch) and len(self._sent_at) < MAX_IN_FLIGHT:
            part: list[Pending] = []
            size = _take(self._urgent, MAX_BATCH - min(len(self._batch), MAX_BATCH // 2), part, 0)
            oldest_client = self._urgent[0][2] if self._urgent else math.inf
            while self._batch and size < MAX_BATCH and self._batch[0][2] < oldest_client:
                part.append(self._batch.popleft())
                size += part[-1][3] or 1
            size = _take(self._urgent, MAX_BATCH, part, size)
            self._waiting -= size
            if self._chain_restart is not None and self.batches_answered >= self._chain_restart:
                self._last_batch, self._chain_restart = b"", None
            self._batches_sent += 1
            token = b"%s-%d" % (self._batch_names, self._batches_sent)
            # One argument for the whole batch: each argument costs Python
            # work to encode, Redis splits it in C.
            seen = b"" if self._log_seen is None else b"%s %d" % self._log_seen
            args = [LOG_BOUND, b"".join([entry[0] for entry in part]),
                    b"%016x" % xor([entry[4] for entry in part]), self._last_batch, token, seen]
            self._last_batch = token
            self._sent_at.append(self._reactor.seconds())
            d = self._call("call_function", self._store_batch, args)
            d.addBoth(self._answered)
            d.addCallbacks(batch_stored, self._batch_failed, callbackArgs=(part,), errbackArgs=(part,))
        self._notify_drained()

    def _notify_drained(self) -> None:
        if self._drain_waiters:
            drained = [w for w in self._drain_waiters if self.backlog < w[0]]
            self._drain_waiters = [w for w in self._drain_waiters if self.backlog >= w[0]]
            for _, waiter in drained:
                waiter.callback(None)

    def _batch_failed(self, failure: Any, part: list[Pending]) -> None:
        """Fail the batch and everything queued behind it: nothing stored after
        a record that was not (a peer's offset must not move past a lost
        record), and no waiting a timeout per batch while Redis is away."""
        waiting = [*part, *self._urgent, *self._batch]
        self._urgent.clear()
        self._batch.clear()
        self._waiting = 0
        # Batches sent after this one take no log step (store_batch.lua). The
        # chain starts again with the first batch sent once every batch sent so
        # far is answered: the node then knows which records were lost (the
        # callers of ``waiting``, and of any of those batches that fails too).
        # Started at once, while batches sent before were unanswered, a step
        # could pass a record of one of them that then failed.
        self._chain_restart = self._batches_sent
        for _, done, _, _, _ in waiting:
            done.errback(failure)
        self._notify_drained()

    def _answered(self, result: Any) -> Any:
        self._sent_at.popleft()  # one connection: batches are answered in the order sent
        if type(result) is bytes and result[:1] not in (b"", b"\n"):
            # "<epoch> 0-<k>" (k: entries before the batch), then "0+" or "1+" per record stored
            epoch, _, k = result[:result.find(b"\n")].partition(b" ")
            top, seen = int(k[2:]) + result.count(b"+"), self._log_seen
            if seen is None or seen[1] < top or seen[0] != epoch:
                self._log_seen = (epoch, top)
            if seen is not None and seen[0] != epoch:  # a batch began a new log: the old one was gone
                why = (f"its update log was replaced ({seen[1]} entries seen in it: emptied, another "
                       "Redis, or gone back to an older copy or lost writes); a new log begins")
                self._reactor.callLater(0, self._checked_log, why)
        if self._urgent or self._batch:
            self._schedule_flush()
        return result

    def get(self, client_id: bytes) -> Deferred[AtRecord | None]:
        """The record held for ``client_id``, or None."""
        d = self._call("hget", self.keys.client(client_id), b"at")
        return d.addCallback(lambda at: parse_at_line(at) if at else None)

    def log_head(self) -> Deferred[Position]:
        """Where this node's update log stands now."""
        d = self._call("eval", LOG_HEAD, self._journal_keys(), [])
        return d.addCallback(lambda r: Position(r[0], r[1]))

    def log_since(self, since: Position | None, count: int, peer: bytes) -> Deferred[LogChunk | None]:
        """For ``peer``: the AT lines of clients updated after ``since`` in this
        node's log by updates that did not come from ``peer`` (all of them when
        ``peer`` is b""; one chunk of at
        most ``count`` log entries); None when ``since`` cannot be served
        incrementally (unknown, another epoch, trimmed away)."""
        epoch, entry = (since.epoch, since.entry) if since else (b"", b"-")
        args = [epoch, entry, str(count).encode(), self.keys.prefix + b"client:", peer]
        d = self._call("eval", LOG_SINCE, self._journal_keys(), args)
        return d.addCallback(_log_chunk, epoch)

    def _journal_keys(self) -> list[bytes]:
        return [self.keys.journal, self.keys.journal_epoch, self.keys.journal_base]

    def scan_records(self, cursor: bytes, count: int) -> Deferred[tuple[bytes, list[bytes]]]:
        """One SCAN step over all clients: (next cursor, AT lines); done at cursor b"0"."""
        d = self._call("eval", SCAN_RECORDS, [], [cursor, self.keys.client_pattern, str(count).encode()])
        return d.addCallback(lambda r: (r[0], r[1:]))

    def scan_times(self, cursor: bytes, count: int) -> Deferred[tuple[bytes, list[tuple[bytes, bytes]]]]:
        """One SCAN step over all clients: (next cursor, [(client id, client-time)]);
        done at cursor b"0"."""
        prefix_length = str(len(self.keys.client(b""))).encode()
        args = [cursor, self.keys.client_pattern, str(count).encode(), prefix_length]
        d = self._call("eval", SCAN_TIMES, [], args)
        return d.addCallback(lambda r: (r[0], list(zip(r[1::2], r[2::2], strict=True))))

    def sample_positions(self, count: int) -> Deferred[PositionSample]:
        """At most ``count`` clients' positions, spread over the GEO set in
        blocks of SAMPLE_BLOCK neighbours (by geohash), the same sample while
        the clients stay put (storage/geo_sample.lua), and how many clients
        the set holds. Fails like every call (StoreUnavailable within about
        the store's timeout)."""
        args = [str(count).encode(), str(SAMPLE_BLOCK).encode()]
        d = self._call("eval", GEO_SAMPLE, [self.keys.geo], args)
        return d.addCallback(_position_sample)

    def summary(self) -> Deferred[Summary]:
        """The count and digest of the clients held, from the summary hash the
        store batches keep (one HMGET, never a SCAN)."""
        d = self._call("hmget", self.keys.summary, [b"clients", b"digest"])
        return d.addCallback(lambda r: Summary(int(r[0] or 0), r[1] or EMPTY_DIGEST))

    def peer_offset(self, peer: bytes) -> Deferred[Position | None]:
        """How far this node has applied ``peer``'s log, if known."""
        d = self._call("hmget", self.keys.peer(peer), [b"epoch", b"pos"])
        return d.addCallback(lambda r: Position(r[0], r[1]) if r[0] and r[1] else None)

    def restore_peer_offset(self, peer: bytes, pos: Position | None) -> Deferred[Any]:
        """Put ``peer``'s offset back to ``pos`` (None: forget it, so the next
        pull is a full transfer)."""
        if pos is None:
            return self._call("execute_command", "DEL", self.keys.peer(peer))
        return self.set_peer_offset(peer, pos)

    def set_peer_offset(self, peer: bytes, pos: Position) -> Deferred[Any]:
        return self._call("execute_command", "HSET", self.keys.peer(peer), b"epoch", pos.epoch,
                          b"pos", pos.entry)

    def call(self, command: str, *args: Any) -> Deferred[Any]:
        """Any txredisapi command, with this store's timeout and error contract."""
        return self._call(command, *args)

    # -- plumbing --------------------------------------------------------

    def _call(self, command: str, *args: Any) -> Deferred[Any]:
        now = self._reactor.seconds()
        if self._failing_since is not None and now - self._failing_since >= self._timeout:
            if not self.connected:
                # Away for a timeout, and not connected: wait for the outcome
                # of the next connection attempt (one every 0.5 s at most, the
                # backoff's cap), not longer: a client pipelining requests gets
                # an answer at each attempt, and a request made just as Redis
                # came back is served. Once connected, as below.
                waiter = self._wait(self._attempt_waiters, RECOVERY_GRACE, now)
                return waiter.addCallback(lambda _: self._call(command, *args))
            # Connected, but not answering (stalled, or back and being checked):
            # wait only briefly for it to serve again (see _check_serving).
            waiter = self._wait(self._recovery_waiters, RECOVERY_GRACE, now)
        elif self.connected:
            return self._run_now(command, args)
        else:
            waiter = self._wait(self._waiters, self._timeout, now)
        return waiter.addCallback(lambda _: self._run_now(command, args))

    def _run_now(self, command: str, args: tuple[Any, ...], probe: bool = False) -> Deferred[Any]:
        """Send the call; ``probe``: the store's own check whether Redis serves
        (its refusals are not reported to ``on_refused``)."""
        started = self._reactor.seconds()
        try:
            d: Deferred[Any] = getattr(self._connection(), command)(*args)
        except Exception as err:  # txredisapi raises synchronously when not connected
            return fail(StoreUnavailable(f"Redis {_SHOWN_AS.get(command, command)}: {err}"))
        if self.observe is not None:
            d.addBoth(self._timed, started)
        return d.addErrback(self._unavailable, command, started, probe)

    def _connection(self) -> Any:
        """The connected protocol, called directly: txredisapi's handler would
        find it through a generator and two Deferreds per call (the pool holds
        one connection, and no command of the store blocks it); the handler
        when there is none (it waits for one)."""
        for conn in self._factory.pool:
            if conn.connected:
                return conn
        return self._redis

    def _timed(self, result: Any, started: float) -> Any:
        self.observe(self._reactor.seconds() - started)  # type: ignore[misc]
        return result

    def _unavailable(self, failure: Any, command: str, started: float, probe: bool) -> None:
        refused = failure.check(txredisapi.ResponseError)
        if refused and failure.getErrorMessage().startswith(NOT_SERVING) and not probe \
                and self.on_refused is not None:
            self.on_refused(failure.getErrorMessage().split(None, 1)[0])
        if not refused or failure.getErrorMessage().startswith(NOT_SERVING):
            self._serving_now = False
            if self._failing_since is None:
                self._failing_since = started
            if self.connected and not self._checking:  # timed out, or Redis restarted under us
                self._checking = True
                self._check_serving()
        if refused:
            failure.raiseException()
        raise StoreUnavailable(f"Redis {_SHOWN_AS.get(command, command)}: {failure.getErrorMessage()}")

    def _wait(self, waiters: list[Deferred[None]], limit: float, since: float) -> Deferred[None]:
        """A Deferred in ``waiters`` (fired when the store can go on), failing
        after ``limit`` seconds."""
        waiter: Deferred[None] = Deferred()
        waiters.append(waiter)
        timer = self._reactor.callLater(limit, self._give_up, waiters, waiter, since)
        return waiter.addBoth(self._cancel_timer, timer)

    def _give_up(self, waiters: list[Deferred[None]], waiter: Deferred[None], since: float) -> None:
        if waiter in waiters:
            waiters.remove(waiter)
            if self._failing_since is None:
                self._failing_since = since
            waiter.errback(StoreUnavailable(self._away()))

    def _away(self) -> str:
        """Why a call fails while Redis is away."""
        why = (f"Redis at {self._address.host}:{self._address.port} has not answered "
               f"for {self._reactor.seconds() - (self._failing_since or 0):.1f} s")
        if self._refused is not None and not self.connected:
            why += f" (last connection attempt: {self._refused})"
        return why

    @staticmethod
    def _cancel_timer(result: Any, timer: Any) -> Any:
        if timer.active():
            timer.cancel()
        return result

    def _connection_ready(self) -> None:
        """A connection is up: queued calls go now. Redis may still be loading
        its data set (it answers LOADING to data commands until done), so
        ``on_connected`` runs only once it takes a write (and again after a
        call failed: a reply may have been lost)."""
        self.connections_made += 1
        # Redis may hold an older batch mark now (restarted, having lost its
        # last second with everysec), with no batch failed: every later step
        # would be refused. The chain starts again.
        self._chain_restart = self._batches_sent
        self._serving_now = False
        self._refused = None
        waiters, self._waiters, self._attempt_waiters = self._waiters + self._attempt_waiters, [], []
        for waiter in waiters:
            waiter.callback(None)
        if not self._checking:
            self._checking = True
            self._check_serving()

    def _connection_refused(self, why: str) -> None:
        self._refused = why
        waiters, self._attempt_waiters = self._attempt_waiters, []
        for waiter in waiters:
            waiter.errback(StoreUnavailable(self._away()))

    def _connection_lost(self) -> None:
        # A connection that served is always reported lost (Redis lost, then
        # back); only connections lost before they served are throttled.
        if self._announced == self.connections_made or self._losses.allow(""):
            _log.warn("lost the connection to Redis at {host}:{port}; reconnecting (requests it cannot "
                      "serve are answered '? <line>')", host=self._address.host, port=self._address.port)

    def _check_serving(self) -> None:
        # A write: a Redis can answer reads while refusing or stalling writes.
        d = self._run_now("hset", (self.keys.status, b"checked", str(self._reactor.seconds()).encode()),
                          probe=True)
        d.addCallback(lambda _: self._read_log(probe=True))
        d.addCallbacks(self._serving, self._not_serving_yet)

    def check_log(self) -> None:
        """Whether Redis still holds the journal this node wrote (once a second,
        while it serves): one emptied (FLUSHALL), replaced, or gone back (an
        older copy, lost writes) is logged, and ``on_connected`` runs as when
        Redis serves again (the node pulls from its peers)."""
        if self.serving and not self._checking:
            self._read_log().addCallbacks(self._checked_log, lambda _: None)

    def _checked_log(self, why: str | None) -> None:
        if self._checking:  # Redis is being checked as it serves again: _serving says it, runs on_connected
            self._log_news = self._log_news or why
        else:
            self._log_changed(why)

    def _read_log(self, probe: bool = False) -> Deferred[str | None]:
        """LOG_CHECK; fires with why the journal is not the one last seen, or None."""
        epoch, top = self._log_seen or (b"", 0)
        d = self._run_now("eval", (LOG_CHECK, self._journal_keys(), [epoch, str(top).encode()]), probe=probe)
        return d.addCallback(self._compare_log)

    def _compare_log(self, reply: list[Any]) -> str | None:
        epoch, top, went_back = reply[0] or None, int(reply[1]), reply[2] == 1
        seen, self._log_seen = self._log_seen, (None if epoch is None else (epoch, top))
        if seen is None:
            return None
        if went_back:
            return (f"its update log went back from {seen[1]} to {top} entries (restored from an older "
                    "copy, or it lost its last writes); a new log begins")
        if epoch is None and seen[1] > 0:
            return "it holds no update log any more (emptied, or another Redis)"
        if epoch is not None and epoch != seen[0]:
            return "it holds another update log (replaced, or restored)"
        return None

    def _log_changed(self, why: str | None) -> None:
        if why is not None:
            self._log_lost(why)
            for callback in list(self.on_connected):
                callback()

    def _log_lost(self, why: str) -> None:
        """Redis does not hold the journal this node wrote (``why``): said, and
        noted for on_connected's readers (``log_lost``)."""
        _log.warn("Redis at {host}:{port}: {why}; pulling every peer's updates again",
                  host=self._address.host, port=self._address.port, why=why)
        # The batch mark went with the log: steps start a new chain, as on a
        # new connection (see _connection_ready).
        self._chain_restart = self._batches_sent
        self.log_lost = True

    def _serving(self, log_changed: str | None) -> None:
        why, self._log_news = log_changed or self._log_news, None
        if why is not None:
            self._log_lost(why)
        announce = self._failing_since is not None or self._said_not_serving
        if announce or self.connections_made > self._announced:
            _log.info("Redis at {host}:{port} serves (connection {n})", host=self._address.host,
                      port=self._address.port, n=self.connections_made)
            self._announced = self.connections_made
        self._checking = self._said_not_serving = False
        self._serving_now = True
        self._failing_since = None
        waiters, self._recovery_waiters = self._recovery_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        for callback in list(self.on_connected):  # a callback may remove itself
            callback()

    def _not_serving_yet(self, failure: Any) -> None:
        if not self._said_not_serving:
            self._said_not_serving = True
            _log.warn("Redis does not serve yet ({why}); checking again every {s:g} s",
                      why=failure.getErrorMessage(), s=SERVING_POLL)
        if self.connected and not self.stopped:
            self._serving_poll = self._reactor.callLater(SERVING_POLL, self._check_serving)
        else:  # the next connection checks again
            self._checking = False


def _position_sample(reply: list[Any]) -> PositionSample:
    points = [(client_id, *geohash.position(int(float(score))))
              for client_id, score in zip(reply[1::2], reply[2::2], strict=True)]
    return PositionSample(int(reply[0]), points)


def _take(queue: deque[Pending], limit: int, part: list[Pending], size: int) -> int:
    """Move entries from ``queue`` to ``part`` while ``part`` holds fewer than
    ``limit`` records (a group is never split); returns how many it holds."""
    while queue and size < limit:
        entry = queue.popleft()
        part.append(entry)
        size += entry[3] or 1
    return size


def _log_chunk(reply: list[Any], epoch: bytes) -> LogChunk | None:
    if reply[0] == b"reset":
        return None
    return LogChunk(Position(epoch, reply[1]), int(reply[2]), reply[3:])
