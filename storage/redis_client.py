"""The store's connection to Redis: txredisapi's protocol and pool factory,
fitted. Calls of a Redis function (:class:`FunctionCall`) skip txredisapi's
command path; one reply timer per connection; a pool that reconnects for
ever with a short backoff and tells the store when a connection is up, lost
or refused; an endpoint that reports why an attempt failed."""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Callable, Sequence
from functools import lru_cache
from hashlib import sha1 as _sha1
from typing import Any

import txredisapi
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from herd.tcp import set_no_delay

_log = Logger(namespace="herd")

# A reply timer this late (seconds) ran after the process was stopped or
# starved; it looks again REREAD seconds later, once replies are read.
RAN_LATE = 1.0
REREAD = 0.1
# Errors of a Redis that cannot take writes now (loading its data, running a
# long script, out of memory, failing to persist, a read-only replica).
NOT_SERVING = ("LOADING", "BUSY", "MASTERDOWN", "OOM", "MISCONF", "READONLY", "NOREPLICAS")


def _not_found(failure: Failure) -> bool:
    """Redis's answer to an FCALL of a function it does not have."""
    return bool(failure.check(txredisapi.ResponseError)) and \
        failure.getErrorMessage().startswith("ERR Function not found")


@lru_cache(maxsize=32)
def _script_sha(script: bytes) -> str:
    return _sha1(script).hexdigest()


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


class RedisProtocol(txredisapi.RedisProtocol):
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
        self._watch_due = 0.0  # when it is due
        self._reread = False  # the timer was just set again to read late replies first
        self.functions: set[bytes] = set()  # FunctionCall names loaded (or being loaded) on this connection
        self._loading: dict[bytes, list[Failure]] = {}  # names whose load is unanswered (see _load)
        self._reading = False  # in dataReceived (see send_now)

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

    def send_now(self) -> None:
        """Write what this connection has buffered now, not when the reactor
        next polls, when the reactor can (herd.reactor's ``write_now``; any
        other reactor writes as it always does). Not while this connection
        reads (a call made by the callback of a reply): a write that failed
        there would close the connection under the replies still to be read,
        which Redis answered, and fail their calls."""
        write_now = getattr(self.transport.reactor, "write_now", None)
        if write_now is not None and not self._reading:
            write_now(self.transport)

    def dataReceived(self, data: bytes, unpause: bool = False) -> Any:  # noqa: N802 (Twisted's name)
        self._reading = True  # (txredisapi also calls this itself, with unpause, to read what it kept)
        try:
            return super().dataReceived(data, unpause)
        finally:
            self._reading = False

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
                self._watch_at(self._reply_timeout)

    def unanswered_since(self) -> float | None:
        """When the oldest call Redis has not answered yet was sent (None: every
        call is answered)."""
        return self._sent[0] if self._sent else None

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

    def _watch_at(self, delay: float) -> None:
        self._watch_due = self.clock.seconds() + delay
        self._watch = self.clock.callLater(delay, self._check_replies)

    def _check_replies(self) -> None:
        """The oldest unanswered call's time is up, or the timer is set again
        for when it will be. A timer that runs much later than it was due
        means this process did not run meanwhile (stopped, or starved of
        CPU): the replies that came then are read first (a reactor runs its
        timers before it polls), or they would be taken for Redis's silence."""
        self._watch = None
        if not self._sent:
            return
        now = self.clock.seconds()
        if now - self._watch_due > RAN_LATE and not self._reread:
            self._reread = True  # once: a reactor late at every turn still times out
            self._watch_at(REREAD)
            return
        self._reread = False
        late = self._sent[0] + self._reply_timeout - now  # type: ignore[operator]
        if late > 0:
            self._watch_at(late)
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


class ReconnectingFactory(txredisapi.RedisFactory):
    """txredisapi's pool factory with a short reconnect backoff and a hook that
    tells the store when a connection becomes usable."""

    protocol = RedisProtocol
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

    def buildProtocol(self, addr: Any) -> RedisProtocol:  # noqa: N802 (Twisted's name)
        protocol: RedisProtocol = super().buildProtocol(addr)
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
class NotingEndpoint:
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
