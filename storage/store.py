"""The node's storage: one small interface over txredisapi.

Contract of every call: its Deferred fires with the answer once Redis has
acknowledged the command, or fails with :class:`StoreUnavailable` within
about ``timeout`` seconds when Redis is unreachable or stuck. The store
reconnects by itself (backoff capped at half a second), so a node recovers
within a second or two of Redis returning.
"""

from __future__ import annotations

import ipaddress
import itertools
import math
import operator
import os
from collections import deque
from collections.abc import Callable, Sequence
from functools import lru_cache, reduce
from hashlib import sha1 as _sha1
from importlib import resources
from typing import Any, NamedTuple, TypeVar, overload

import txredisapi
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from config.schema import RedisAddress
from herd.logs import Throttle
from herd.wire.client import AtRecord, parse_at_line
from herd.wire.peer import ANY_ENTRY, LogStep, Position
from storage import geohash
from storage.keys import Keys

_new = tuple.__new__  # makes NamedTuples without their __new__'s Python frame
_T = TypeVar("_T")

_log = Logger(namespace="herd")


def _lua(name: str) -> bytes:
    return resources.files("storage").joinpath(name).read_bytes()


STORE_BATCH = _lua("store_batch.lua")
LOG_SINCE = _lua("log_since.lua")
LOG_HEAD = _lua("log_head.lua")
SCAN_RECORDS = _lua("scan_records.lua")
SCAN_TIMES = _lua("scan_times.lua")
GEO_SAMPLE = _lua("geo_sample.lua")
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
# Errors of a Redis that cannot take writes now (loading its data, running a
# long script, out of memory, failing to persist, a read-only replica).
NOT_SERVING = ("LOADING", "BUSY", "MASTERDOWN", "OOM", "MISCONF", "READONLY", "NOREPLICAS")
SERVING_POLL = 0.1  # seconds between checks whether Redis takes writes again
STALLED = 0.25  # seconds a store batch may wait for Redis before the store counts as not serving
# Seconds a call waits for Redis to serve again once it has not answered for a
# timeout: over twice the reconnect backoff's cap (a Redis that is back is
# reconnected within it), short enough that a client pipelining requests on
# one connection does not wait a whole timeout per request.
RECOVERY_GRACE = 1.25


class LogChunk(NamedTuple):
    end: Position  # the position after this chunk
    entries: int  # log entries read (fewer than asked: the log is exhausted)
    lines: list[bytes]  # current AT lines of the clients those entries name


class StoreResult(NamedTuple):
    stored: bool  # the record was newer and is now held
    position: Position | None  # where it went in this node's log, when stored
    advanced: bool  # the log step's peer offset moved to step.pos
    previous: Position | None = None  # the log entry just before position


class OnDemand(Sequence[_T]):
    """A sequence of ``count`` items, each made when it is read (``_item``)."""

    __slots__ = ("_count",)

    def __init__(self, count: int):
        self._count = count

    def __len__(self) -> int:
        return self._count

    def _item(self, index: int) -> _T:  # 0 <= index < len
        raise NotImplementedError

    @overload
    def __getitem__(self, index: int) -> _T: ...

    @overload
    def __getitem__(self, index: slice) -> list[_T]: ...

    def __getitem__(self, index: int | slice) -> _T | list[_T]:
        if isinstance(index, slice):
            return [self._item(i) for i in range(*index.indices(self._count))]
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError(index)
        return self._item(index)


class StoredRun(OnDemand[StoreResult]):
    """The StoreResults of a group stored whole in one batch (the usual case),
    made on demand: record i is at ``<epoch>/0-<first + i>``, each right after
    the one before it, the first right after ``previous``. Most callers read
    only its ends (see Node._group_stored), not a result per record."""

    __slots__ = ("epoch", "first", "previous")

    def __init__(self, epoch: bytes, first: int, count: int, previous: Position):
        super().__init__(count)
        self.epoch, self.first, self.previous = epoch, first, previous

    def position(self, index: int) -> Position:
        """Where record ``index`` (0 <= index < len) went in the log."""
        return _new(Position, (self.epoch, b"0-%d" % (self.first + index)))

    def previous_of(self, index: int) -> Position:
        """The log entry right before record ``index``."""
        return self.position(index - 1) if index else self.previous

    def _item(self, index: int) -> StoreResult:
        return _new(StoreResult, (True, self.position(index), False, self.previous_of(index)))


def set_no_delay(transport: Any) -> None:
    """Disable Nagle's algorithm on a TCP transport (others are left alone)."""
    if hasattr(transport, "setTcpNoDelay"):
        transport.setTcpNoDelay(True)


# Records' part of the batch argument, their Deferred, their place in arrival
# order, how many records (0 for one record whose Deferred fires with its
# StoreResult; n >= 1 for a group whose Deferred fires with a sequence of n:
# a StoredRun when all were stored), and the XOR of the digest parts of those
# known newer (see _digest_part).
_Pending = tuple[bytes, Deferred[Any], int, int, int]


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


def _not_found(failure: Failure) -> bool:
    """Redis's answer to an FCALL of a function it does not have."""
    return bool(failure.check(txredisapi.ResponseError)) and \
        failure.getErrorMessage().startswith("ERR Function not found")


def refused_unrun(failure: Any) -> bool:
    """Whether ``failure`` is Redis refusing a call before running it (out of
    memory, failing to persist, loading, ...: NOT_SERVING), so that nothing
    of it was written; a timeout or a lost connection leaves that unknown."""
    return bool(failure.check(txredisapi.ResponseError)) and failure.getErrorMessage().startswith(NOT_SERVING)


@lru_cache(maxsize=32)
def _script_sha(script: bytes) -> str:
    return _sha1(script).hexdigest()


# Calls named in errors (and so in the event log) as the Redis command they send.
_SHOWN_AS = {"call_function": "fcall"}


def _bulk_strings(values: Sequence[bytes]) -> bytes:
    """``values`` as RESP bulk strings, one after the other."""
    return b"".join([b"$%d\r\n%s\r\n" % (len(value), value) for value in values])


class FunctionCall:
    """A function of a Redis function library file (``#!lua name=<library>``
    on its first line, the function registered as ``'<function>'``), called
    with the same keys and first arguments every time. It is loaded under
    names that tell its version: ``<library>_<v>`` and ``<function>_<v>``,
    ``<v>`` the first 12 hex digits of the file's SHA-1 (``library`` is the
    code to load); the start of its FCALL command is encoded once
    (``command``)."""

    def __init__(self, source: bytes, function: bytes, keys: Sequence[bytes], fixed: Sequence[bytes]):
        version = _sha1(source).hexdigest()[:12].encode()
        shebang, code = source.split(b"\n", 1)
        registered = b"'%s'" % function
        if not shebang.startswith(b"#!lua name=") or code.count(registered) != 1:
            raise ValueError(f"not a library registering {function!r} once")
        self.name = b"%s_%s" % (function, version)
        self.library = b"%s_%s\n%s" % (shebang, version, code.replace(registered, b"'%s'" % self.name))
        self._count = 3 + len(keys) + len(fixed)
        self._start = _bulk_strings([b"FCALL", self.name, b"%d" % len(keys), *keys, *fixed])

    def command(self, args: Sequence[bytes]) -> bytes:
        """The whole FCALL command, ``args`` after the fixed arguments."""
        return b"*%d\r\n%s%s" % (self._count + len(args), self._start, _bulk_strings(args))


class _RedisProtocol(txredisapi.RedisProtocol):
    """txredisapi's protocol with three of its per-call costs cut, the same
    bytes on the wire. At a thousand updates a second each Lua call carries
    one or two records, and such fixed costs are most of it: encoding each
    argument took two ``_encode_value`` calls and a dozen more (10 us per
    store batch), ``eval`` hashed the whole script (15 kB, 9 us) every
    time, and each call had a reply timer of its own (a DelayedCall pushed
    into and cancelled out of the reactor's heap, three closures and a
    second Deferred). The store's batches skip txredisapi's command path
    altogether: they are calls of a Redis function (``call_function``).

    Reply timeout, as txredisapi's: a call Redis has not answered within
    ``replyTimeout`` seconds fails with txredisapi.TimeoutError, so do all
    calls behind it, and the connection is aborted. Replies come in the order
    of the calls, so one timer per connection watches the oldest call. Every
    call has the timeout (the store never asks for one without, nor pipelines
    through txredisapi)."""

    clock: IReactorTime  # set by the factory

    def __init__(self, *args: Any, replyTimeout: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, replyTimeout=None, **kwargs)  # no timer per call
        self._reply_timeout = replyTimeout
        self._sent: deque[float] = deque()  # when each unanswered call was sent
        self._watch: Any = None  # the timer, while a call is unanswered
        self.functions: set[bytes] = set()  # FunctionCall names loaded (or being loaded) on this connection
        self._loading: dict[bytes, list[Failure]] = {}  # names whose load is unanswered (see _load)

    def execute_command(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        result = super().execute_command(*args, **kwargs)
        self._sent_now()
        return result  # type: ignore[no-any-return]

    def call_function(self, call: FunctionCall, args: Sequence[bytes]) -> Deferred[Any]:
        """FCALL of ``call``'s function with its keys and fixed arguments, then
        ``args``: the command as ``call`` encoded it, and one Deferred waiting
        for the reply (txredisapi's ``execute_command`` builds two Deferreds,
        two closures and the whole command each time). The first call on a
        connection loads the library first, in the same write order (Redis
        answers "already exists" when it has it: nothing is written). A call
        answered "Function not found" (a FUNCTION FLUSH or DELETE) fails, and
        the next call loads the library again. It is not sent again: calls
        apply in the order sent, and the calls behind it, sent before that
        load, fail too; each sent again as its reply came, a newer call could
        go ahead of them. A call sent while a load is unanswered reports the
        load's refusal (OOM, MISCONF ...) if Redis refuses it, not its own
        "Function not found"."""
        if not self.connected:
            raise txredisapi.ConnectionError("Not connected")
        if call.name not in self.functions:
            self._load(call)
        refused = self._loading.get(call.name)
        self.transport.write(call.command(args))
        reply: Deferred[Any] = self.replyQueue.get()
        reply.addCallback(self.handle_reply)
        self._sent_now()
        if refused is not None:  # (only its "Function not found": any other failure is the call's own)
            reply.addErrback(lambda failure: refused[0] if refused and _not_found(failure) else failure)
        return reply.addErrback(self._function_missing, call)

    def _load(self, call: FunctionCall) -> None:
        """FUNCTION LOAD of ``call``'s library. Until it is answered,
        ``_loading`` holds a list for its name, which gets the failure of a
        load Redis refused (not for "already exists"): the cause to report
        rather than the "Function not found" of the FCALLs behind it."""
        self.functions.add(call.name)
        refused: list[Failure] = []
        self._loading[call.name] = refused

        def loaded(result: Any) -> None:
            if self._loading.get(call.name) is refused:
                del self._loading[call.name]
            if isinstance(result, Failure) and "already exists" not in result.getErrorMessage():
                self.functions.discard(call.name)
                refused.append(result)

        self.execute_command(b"FUNCTION", b"LOAD", call.library).addBoth(loaded)

    def _function_missing(self, failure: Failure, call: FunctionCall) -> Failure:
        if _not_found(failure):
            self.functions.discard(call.name)
            return Failure(txredisapi.ResponseError(
                f"{failure.getErrorMessage()}: {call.name.decode()} (loaded again with the next call)"))
        return failure

    def _sent_now(self) -> None:
        """A call was just written: watch for its reply."""
        if self._reply_timeout:
            self._sent.append(self.clock.seconds())
            if self._watch is None:
                self._watch = self.clock.callLater(self._reply_timeout, self._check_replies)

    def replyReceived(self, reply: Any) -> None:  # noqa: N802 (txredisapi's name)
        if self._sent:
            self._sent.popleft()
        super().replyReceived(reply)

    def connectionLost(self, why: Any) -> None:  # noqa: N802 (Twisted's name)
        self._sent.clear()
        if self._watch is not None and self._watch.active():
            self._watch.cancel()
        self._watch = None
        super().connectionLost(why)

    def _check_replies(self) -> None:
        """The oldest unanswered call's time is up, or the timer is set again
        for when it will be."""
        self._watch = None
        if not self._sent:
            return
        late = self._sent[0] + self._reply_timeout - self.clock.seconds()  # type: ignore[operator]
        if late > 0:
            self._watch = self.clock.callLater(late, self._check_replies)
            return
        self._sent.clear()
        while self.replyQueue.waiting:
            self.replyQueue.put(txredisapi.TimeoutError(
                f"Not received Redis response in {self._reply_timeout} seconds"))
        self.transport.abortConnection()

    def _build_command(self, *args: Any, **kwargs: Any) -> bytes:
        encode = self._encode_value
        return b"*%d\r\n%s" % (len(args), _bulk_strings([arg if type(arg) is bytes else encode(arg)
                                                            for arg in args]))

    def eval(self, script: bytes, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Deferred[Any]:
        """txredisapi's ``eval`` (EVALSHA once the script is known on this
        connection, else EVAL), with the script's SHA-1 computed once."""
        sha = _script_sha(script)
        if sha in self.script_hashes:
            return self.evalsha(sha, keys, args).addErrback(self._evalsha_failed, script, sha, keys, args)
        return self._eval(script, sha, keys, args)  # type: ignore[no-any-return]


class _ReconnectingFactory(txredisapi.RedisFactory):
    """txredisapi's pool factory with a short reconnect backoff and a hook that
    tells the store when a connection becomes usable."""

    protocol = _RedisProtocol
    initialDelay = 0.1
    maxDelay = 0.5
    jitter = 0.1  # a normal spread: nearly always within 30% of the delay
    noisy = False

    def __init__(self, clock: IReactorTime, on_connected: Any, on_refused: Callable[[str], None],
                 on_lost: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._clock = clock
        # txredisapi fails this Deferred (made for non-lazy pools) when a
        # connection's set-up fails; nobody waits on it here: no "Unhandled
        # error in Deferred" (the cause reaches on_refused).
        self.deferred.addErrback(lambda _: None)
        self._on_connected = on_connected
        self._on_refused = on_refused
        self._on_lost = on_lost

    def buildProtocol(self, addr: Any) -> _RedisProtocol:  # noqa: N802 (Twisted's name)
        protocol: _RedisProtocol = super().buildProtocol(addr)
        protocol.clock = self._clock
        return protocol

    def connectionError(self, why: str) -> None:  # noqa: N802 (txredisapi's name)
        # A connection was made but its set-up failed (wrong password, bad db).
        self._on_refused(why.removeprefix("Redis error: "))
        super().connectionError(why)

    def stopTrying(self) -> Any:
        # txredisapi gives up for good when AUTH or SELECT fails on a new
        # connection, which a Redis still loading its data set makes them do
        # (LOADING). Keep reconnecting instead; shutting down uses disconnect().
        _log.warn("Redis refused the connection set-up; reconnecting")
        return succeed(None)

    def addConnection(self, conn: Any) -> None:
        # Pipelined commands must not wait for Nagle's algorithm (40 ms stalls).
        set_no_delay(conn.transport)
        super().addConnection(conn)
        if self.size:
            self._on_connected()

    def delConnection(self, conn: Any) -> None:  # noqa: N802 (txredisapi's name)
        super().delConnection(conn)
        # txredisapi leaves a lost connection in its queue of idle ones (the
        # store never takes connections from it): one dead protocol object
        # kept for good per reconnect.
        if conn in self.connectionQueue.pending:
            self.connectionQueue.remove(conn)
        if not self.size and not self.disconnectCalled:
            self._on_lost()


def redis_endpoint(reactor: Any, host: str, port: int, timeout: float) -> IStreamClientEndpoint:
    """Where the store connects. An IP address is connected to directly: a
    HostnameEndpoint reports a refused connection only after its 0.3 s delay
    between addresses, so each attempt to reach a Redis that is down took
    0.3 s longer, and calls waiting for an attempt's outcome with it."""
    try:
        version = ipaddress.ip_address(host).version
    except ValueError:
        return HostnameEndpoint(reactor, host, port, timeout=timeout)
    endpoint = TCP6ClientEndpoint if version == 6 else TCP4ClientEndpoint
    return endpoint(reactor, host, port, timeout=timeout)


@implementer(IStreamClientEndpoint)
class _NotingEndpoint:
    """An endpoint that reports why each failed connection attempt failed."""

    def __init__(self, endpoint: IStreamClientEndpoint, on_refused: Callable[[str], None], name: str):
        self._endpoint = endpoint
        self._on_refused = on_refused
        self._name = name

    def __repr__(self) -> str:  # as Twisted's "Scheduling retry N to connect ..." shows it
        return self._name

    def connect(self, factory: Any) -> Deferred[Any]:
        d: Deferred[Any] = self._endpoint.connect(factory)
        return d.addErrback(self._failed)

    def _failed(self, failure: Any) -> Any:
        self._on_refused(failure.getErrorMessage())
        return failure


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
        self._batch: deque[_Pending] = deque()  # from peers
        self._urgent: deque[_Pending] = deque()  # from clients
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
        keys = self.keys
        batch_keys = [keys.geo, keys.journal, keys.journal_epoch, keys.summary, keys.journal_base,
                      keys.journal_batch]
        self._store_batch = FunctionCall(STORE_BATCH, b"herd_store_batch", batch_keys, [keys.prefix])
        self.observe: Callable[[float], None] | None = None  # gets each call's latency (s)
        # Gets the reason (the error's first word: OOM, LOADING, MISCONF, ...)
        # of each call Redis refused because it cannot take writes now; not
        # called for the store's own checks whether it serves again.
        self.on_refused: Callable[[str], None] | None = None
        self._factory = _ReconnectingFactory(
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
        self._factory.startConnecting(_NotingEndpoint(endpoint, self._connection_refused,
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
        no store batch has waited for its answer longer than STALLED."""
        if not (self._serving_now and self.connected):
            return False
        return not self._sent_at or self._reactor.seconds() - self._sent_at[0] < STALLED

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

        Calls made in one reactor turn go to Redis as one batch (one Lua call),
        applied in call order; each Deferred fires with its own StoreResult once
        Redis has acknowledged the batch."""
        done: Deferred[StoreResult] = Deferred()
        blob = _record_blob(record, _KINDS[tie_break][known_newer], step, source)
        self._queue(blob, done, 0, _digest_part(record.line) if known_newer else 0,
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
        kinds = _KINDS[bool(source)]
        known = known_newer or [False] * len(records)
        pairs = list(zip(records, known, strict=True))
        blob = b"".join([_record_blob(record, kinds[newer], None, source) for record, newer in pairs])
        digest = _xor([_digest_part(record.line) for record, newer in pairs if newer])
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
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._batch_call is None and len(self._sent_at) < MAX_IN_FLIGHT:
            self._batch_call = self._reactor.callLater(0, self._flush_next_turn)

    def _flush_next_turn(self) -> None:
        """Build the batch one reactor turn later, after the reactor has written
        what this turn queued: an update forwarded cut-through leaves before
        the Python work of a Lua call, about 0.2 ms sooner per hop."""
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
            part: list[_Pending] = []
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
            args = [LOG_BOUND, b"".join([entry[0] for entry in part]),
                    b"%016x" % _xor([entry[4] for entry in part]), self._last_batch, token]
            self._last_batch = token
            self._sent_at.append(self._reactor.seconds())
            d = self._call("call_function", self._store_batch, args)
            d.addBoth(self._answered)
            d.addCallbacks(_batch_stored, self._batch_failed, callbackArgs=(part,), errbackArgs=(part,))
        self._notify_drained()

    def _notify_drained(self) -> None:
        if self._drain_waiters:
            drained = [w for w in self._drain_waiters if self.backlog < w[0]]
            self._drain_waiters = [w for w in self._drain_waiters if self.backlog >= w[0]]
            for _, waiter in drained:
                waiter.callback(None)

    def _batch_failed(self, failure: Any, part: list[_Pending]) -> None:
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
        d.addCallbacks(self._serving, self._not_serving_yet)

    def _serving(self, _: Any) -> None:
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


def _digest_part(line: bytes) -> int:
    """An AT line's part of the summary digest: the first 64 bits of its SHA-1."""
    return int.from_bytes(_sha1(line).digest()[:8])


def _xor(values: list[int]) -> int:
    return reduce(operator.xor, values, 0)


# store_batch.lua's record kind, by tie-break and known newer: whether the
# record's digest part is in the batch's (the node's XOR) or left to the script.
_KINDS = ((b"2", b"0"), (b"3", b"1"))


def _record_blob(record: AtRecord, kind: bytes, step: LogStep | None, source: bytes) -> bytes:
    """One record's part of store_batch.lua's batch argument: the AT record's
    fields, its kind (_KINDS) and source, each followed by a newline, then
    only with a log step its fields, each followed by a newline; the record
    ends with a tab (no field holds a newline or a tab; only a source,
    "<peer> F", a space)."""
    location = record.location
    if step is None:
        return b"%s\n%s\n%s\n%s\n%s\n%s\n%s\n%s\n\t" % (
            record.server, record.skew, record.client_id, location.lat, location.lon, record.time.text,
            kind, source)
    return b"%s\n%s\n%s\n%s\n%s\n%s\n%s\n%s\n%s\n%s\n%s\n%s\n\t" % (
        record.server, record.skew, record.client_id, location.lat, location.lon, record.time.text,
        kind, source, step.peer, step.prev.epoch, step.prev.entry, step.pos.entry)


_NOT_STORED = StoreResult(False, None, False)
_NOT_STORED_ADVANCED = StoreResult(False, None, True)


def _batch_stored(reply: bytes, part: list[_Pending]) -> None:
    """Fire each record's (or group's) Deferred from store_batch.lua's reply: a
    line "<epoch> 0-<k>", the journal position before the batch (empty when
    nothing was stored), then per record "<advanced 0|1>", with "+" when
    stored: the stored ones are at 0-<k+1>, 0-<k+2>, ... in order, and a
    stored record's previous entry is the one stored before it in the batch
    (or the head before it)."""
    lines = reply.split(b"\n")
    epoch, _, previous_entry = lines[0].partition(b" ")
    k = int(previous_entry[2:]) if previous_entry else 0
    previous = _new(Position, (epoch, previous_entry))
    at = 1
    for _, done, _, count, _ in part:
        chunk = lines[at:at + (count or 1)]
        at += count or 1
        if count and chunk.count(b"0+") == count:  # a group stored whole: the usual case
            run = StoredRun(epoch, k + 1, count, previous)
            k += count
            previous = run.position(count - 1)
            done.callback(run)
            continue
        results = []
        for line in chunk:
            if len(line) > 1:
                k += 1
                position = _new(Position, (epoch, b"0-%d" % k))
                results.append(_new(StoreResult, (True, position, line[:1] == b"1", previous)))
                previous = position
            else:
                results.append(_NOT_STORED_ADVANCED if line == b"1" else _NOT_STORED)
        done.callback(results if count else results[0])


def _take(queue: deque[_Pending], limit: int, part: list[_Pending], size: int) -> int:
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
