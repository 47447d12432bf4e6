"""Client connections: the node's client port and its line protocol
(SPEC section 1). Peers never connect here (herd.peer.accepted serves the
peer port): a peer handshake line is answered like any other bad line.

Client contract: requests on one connection are answered in order, each
reply in one write. A WHATSAT starts only after every earlier IAMAT on the
connection has been answered, and later IAMATs start only once it has been,
so it sees the updates sent before it and none sent after it. WHATSATs with
no IAMAT between them (a run) change nothing, so they start together (at
most WHATSATS_AT_ONCE of a connection at a time): a pipeline of them waiting
for a slow places provider costs one provider timeout, not one each. A client
that half-closes still gets every reply, and the connection closes once they
are written.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from config.schema import HerdConfig
from herd import logs
from herd.tcp import peer_address, set_no_delay
from herd.wire.client import Iamat, Invalid, Request, Whatsat, parse_request, too_long_reply
from herd.wire.lines import LineProtocol

if TYPE_CHECKING:
    from herd.node import Node

log = Logger(namespace="herd")


def _follow(done: Deferred[None]) -> Deferred[None]:
    """A new Deferred that fires once ``done`` has; what is chained on it cannot
    disturb ``done``'s own callback chain."""
    follower: Deferred[None] = Deferred()

    def fire(result: object) -> object:
        follower.callback(None)
        return result

    done.addBoth(fire)
    return follower


class _Reply:
    """One request's place in the ordered reply queue, or a group's (the
    IAMATs of one read, answered together)."""

    __slots__ = ("data", "_done", "count")

    def __init__(self, count: int) -> None:
        self.count = count  # requests it answers
        self.data: bytes | None = None
        self._done: Deferred[None] | None = None  # made only when a WHATSAT waits for it

    @property
    def done(self) -> Deferred[None]:
        """Fires once the reply is ready."""
        if self._done is None:
            self._done = Deferred() if self.data is None else succeed(None)
        return self._done

    def fill(self, data: bytes) -> None:
        self.data = data
        if self._done is not None:
            self._done.callback(None)


class _Run:
    """Consecutive WHATSATs of a connection, nothing but invalid lines between
    them: they start together, once the requests before the first are
    answered; the requests after them start once all are answered (``done``)."""

    __slots__ = ("start", "done", "_unanswered")

    def __init__(self, start: Deferred[Any]) -> None:
        self.start = start
        self.done: Deferred[None] = Deferred()
        self._unanswered = 0

    @property
    def open(self) -> bool:
        """More WHATSATs may join: some of it is unanswered."""
        return not self.done.called

    def add(self, slot: _Reply) -> None:
        self._unanswered += 1
        slot.done.addCallback(self._answered)

    def _answered(self, _: object) -> None:
        self._unanswered -= 1
        if self._unanswered == 0:
            self.done.callback(None)


class _Searches:
    """At most ``limit`` WHATSATs of a connection searching at once, the rest
    waiting their turn in order. One that ends starts the next from a loop,
    not from within its own end: searches that end at once (a lost
    connection, a Redis away) would otherwise nest a call each, and a long
    pipeline overflowed the stack (DeferredSemaphore does that)."""

    def __init__(self, limit: int) -> None:
        self._free = limit
        self._waiting: deque[tuple[Callable[[Whatsat], Deferred[bytes]], Whatsat, Deferred[bytes]]] = deque()
        self._starting = False

    def run(self, search: Callable[[Whatsat], Deferred[bytes]], request: Whatsat) -> Deferred[bytes]:
        done: Deferred[bytes] = Deferred()
        self._waiting.append((search, request, done))
        self._start()
        return done

    def _start(self) -> None:
        if self._starting:  # (a search that ended at once, in the loop below)
            return
        self._starting = True
        try:
            while self._free and self._waiting:
                search, request, done = self._waiting.popleft()
                self._free -= 1
                maybeDeferred(search, request).addBoth(self._ended).chainDeferred(done)
        finally:
            self._starting = False

    def _ended(self, result: Any) -> Any:
        self._free += 1
        self._start()
        return result


# Seconds a connection this node closes keeps reading (and dropping) what the
# client still sends, once its replies and FIN are sent, for the client to close.
LINGER = 1.0
# WHATSATs of one connection searching at once (the rest of a run wait their
# turn): a client's pipeline does not take all of the provider's call slots.
WHATSATS_AT_ONCE = 4


@implementer(IPushProducer)
class _UnreadReplies:
    """Registered with a client's transport, which pauses it while the replies
    the client has not read fill the transport's buffer: the connection then
    stops reading requests, so a client that sends and never reads holds a
    bounded amount of the node's memory and work."""

    def __init__(self, conn: ClientConnection) -> None:
        self._conn = conn

    def pauseProducing(self) -> None:  # noqa: N802 (Twisted's name)
        self._conn.pause_reading("unread")

    def resumeProducing(self) -> None:  # noqa: N802
        self._conn.resetTimeout()  # the client read its replies: it is not idle
        self._conn.resume_reading("unread")

    def stopProducing(self) -> None:  # noqa: N802
        pass


@implementer(IHalfCloseableProtocol)
class ClientConnection(LineProtocol, TimeoutMixin):
    """A client's connection.

    Limits (config ``[herd]``): a client silent for ``idle_timeout`` seconds is
    disconnected once its replies are written, and cut off (its unread replies
    dropped) if they are still unread ``idle_timeout`` later; with
    ``max_outstanding`` requests unanswered, reading pauses until half of them
    are answered, and while the client leaves its replies unread (back-pressure,
    nothing is refused).
    """

    factory: ClientConnectionFactory
    node: Node
    transport: Any
    who: str

    def __init__(self) -> None:
        self._replies: deque[_Reply] = deque()
        # The last run of WHATSATs: requests after it start once it is answered,
        # so it sees the state of the requests before it, no later one.
        self._run: _Run | None = None
        self._run_ended = True  # an IAMAT came after it: the next WHATSAT begins a new run
        self._since_run: deque[_Reply] = deque()  # the replies queued after it, unanswered ones
        self._searches = _Searches(WHATSATS_AT_ONCE)
        self._eof = False
        self._closing = False
        self._lost = False
        self._read_closed = False  # the client half-closed: nothing more to read
        self._paused: set[str] = set()  # why reading is paused: "outstanding", "unread"
        self._flush_call: Any = None  # the end-of-turn write of the replies filled in this turn
        self._abort_call: Any = None  # cuts off an idle client whose replies stay unread
        self._linger_call: Any = None  # ends a close this node began if the client does not
        self._cut_off_unread = False  # the close is for idleness: cut off if it does not end
        self._received: list[bytes] = []  # lines of the current read, for the access log
        self._iamats: list[Iamat] = []  # IAMATs of the current read, answered together at its end
        self._now = 0  # when the current read arrived (ns): the receive time of its requests
        self._outstanding = 0  # requests unanswered
        self.closed: Deferred[None] = Deferred()

    # -- connection lifecycle -------------------------------------------

    def connectionMade(self) -> None:
        self.node = self.factory.node
        self.max_line = self.factory.max_line
        self.who = peer_address(self.transport)
        self.factory.connections.add(self)
        set_no_delay(self.transport)  # replies leave at once, not after the client's ACK
        self.transport.registerProducer(_UnreadReplies(self), True)
        logs.connection(self.who, "connection opened")
        self.setTimeout(self.factory.limits.idle_timeout or None)

    def dataReceived(self, data: bytes) -> None:
        if self._stopped_reading:  # closing: input is dropped, and is no sign of life
            return
        self.resetTimeout()
        self._now = self.factory.clock_ns()
        super().dataReceived(data)
        self._answer_iamats()
        self._log_received()

    def _log_received(self) -> None:
        """The lines of this read go into the access log together (one call,
        not one per line: see herd.logs.AccessLog.block)."""
        if self._received:
            logs.wire_block(self.who, "recv", b"\n".join(self._received) + b"\n")
            self._received = []

    def timeoutConnection(self) -> None:
        logs.connection(self.who, f"idle for {self.factory.limits.idle_timeout:g}s; closing")
        self._cut_off_unread = True
        if self._closing:  # (half-closed, its replies made: the close is under way)
            self._cut_off_later()
        else:
            self.close_when_idle()

    def _cut_off_later(self) -> None:
        """A close waits for the replies to be read: a client that never reads
        would keep its descriptor and its max_connections slot for ever. It
        is cut off ``idle_timeout`` after the close began (which waits only
        for the transport's own buffer, 64 KiB or so, to go to the kernel:
        a client that reads that much meanwhile is closed normally)."""
        self._abort_call = self.node.clock.callLater(self.factory.limits.idle_timeout, self._abort_unread)

    def _abort_unread(self) -> None:
        self._abort_call = None
        logs.connection(self.who, f"replies unread {self.factory.limits.idle_timeout:g}s after closing; "
                                  "cutting off")
        self.transport.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.setTimeout(None)
        for call in (self._abort_call, self._linger_call):
            if call is not None and call.active():
                call.cancel()
        self._lost = self._closing = True  # nothing is written any more, no WHATSAT started
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()  # nothing can be written any more
        self.factory.connections.discard(self)
        logs.connection(self.who, f"connection closed ({reason.getErrorMessage() if reason else ''})")
        self.closed.callback(None)

    def readConnectionLost(self) -> None:
        if self._read_closed:
            return
        self._read_closed = True
        if self._closing:  # this node's close: the client read it and closed too
            self.transport.loseConnection()
            return
        logs.connection(self.who, "half-closed by client")
        self._now = self.factory.clock_ns()
        self.flush_partial_line()
        self._answer_iamats()
        self._log_received()
        self._eof = True
        self._close_if_idle()

    def writeConnectionLost(self) -> None:
        """Every reply is sent and followed by this node's FIN (see
        _lose_connection): the client has LINGER seconds to close in turn."""
        self._linger_call = self.node.clock.callLater(LINGER, self.transport.loseConnection)

    def _lose_connection(self) -> None:
        """Close once what is written is sent. The producer goes first: a
        transport that drains its buffer while its producer is paused resumes
        the producer instead of closing. Unless the client closed its side
        already, only this side is closed (FIN after the replies), and what the
        client still sends is read and dropped until it closes too, at most
        LINGER s after the FIN: a socket closed with input unread answers with
        a reset, and a reset makes the client's system drop the replies it
        holds unread (found stopping a node under a client still sending)."""
        self.transport.unregisterProducer()
        if self._read_closed:
            self.transport.loseConnection()
            return
        self.stop_reading()  # what comes now is dropped unparsed
        if self._paused:
            self._paused.clear()
            self.transport.resumeProducing()
        self.transport.loseWriteConnection()

    def close_when_idle(self) -> None:
        """Stop reading; close once every pending reply is written."""
        self.stop_reading()
        self._eof = True
        self._close_if_idle()

    # -- lines ----------------------------------------------------------

    def lines_received(self, lines: list[bytes]) -> None:
        """The complete lines of one read, parsed together. The usual read, all
        IAMATs with no WHATSAT unanswered before them, joins the read's group
        at once; any other goes request by request."""
        now, bound = self._now, self.factory.max_future_ns
        requests = [parse_request(line, now, bound) for line in lines]
        if not self._after_whatsat and all(type(r) is Iamat for r in requests):
            self._received.extend(lines)
            self._iamats.extend(requests)  # type: ignore[arg-type]
            return
        for line, request in zip(lines, requests, strict=True):
            if self._stopped_reading:
                return
            self._request(line, request)

    @property
    def _after_whatsat(self) -> bool:
        """A WHATSAT is unanswered: IAMATs after it wait for its answer."""
        return self._run is not None and self._run.open

    def line_received(self, line: bytes) -> None:
        self._request(line, parse_request(line, self._now, self.factory.max_future_ns))

    def _request(self, line: bytes, request: Request | Invalid | None) -> None:
        self._received.append(line)
        if request is None:
            return
        if isinstance(request, Iamat) and not self._after_whatsat:
            self._iamats.append(request)
            return
        self._answer_iamats()  # the IAMATs before this line keep their place
        if isinstance(request, Invalid):
            self.node.stats.request("invalid", "refused")
            self._answer(succeed(request.reply), [line])
        elif isinstance(request, Whatsat):
            run = self._run_for_whatsat()
            start = _follow(run.start).addCallback(lambda _: self._searches.run(self._whatsat, request))
            run.add(self._answer(start, [line]))
            self._since_run.clear()
        else:  # an IAMAT after a WHATSAT still unanswered: it starts once that is
            received = self._now
            after = _follow(self._run.done)  # type: ignore[union-attr]
            self._answer(after.addCallback(lambda _: self.node.handle(request, received)), [line])
            self._run_ended = True

    def _run_for_whatsat(self) -> _Run:
        """The run a WHATSAT joins: the last one while it is open and no IAMAT
        came after it, else a new one. Everything before the last run was
        answered before it: a new run waits for that run and what came after
        it, not for every queued reply (that made a pipeline of WHATSATs cost
        its length squared)."""
        if self._run is not None and self._run.open and not self._run_ended:
            return self._run
        waits = [slot.done for slot in self._since_run if slot.data is None]
        if self._run is not None and self._run.open:
            waits.append(_follow(self._run.done))
        self._run = _Run(gatherResults(waits) if waits else succeed(None))
        self._run_ended = False
        return self._run

    def _whatsat(self, request: Whatsat) -> Deferred[bytes]:
        if self._lost:  # its reply could not be written: no Redis call, no places search
            return succeed(b"")
        return self.node.handle(request, 0)

    def _answer_iamats(self) -> None:
        """Answer the IAMATs gathered so far in this read, as one group."""
        if self._iamats:
            group, self._iamats = self._iamats, []
            self._answer(self.node.iamats(group, self._now), [request.line for request in group])

    def line_too_long(self) -> None:
        reply = too_long_reply(self.max_line)
        self._answer_iamats()
        self._log_received()
        logs.connection(self.who, f"line over {self.max_line} bytes; closing")
        self._answer(succeed(reply), [b""])
        self._eof = True
        self._close_if_idle()

    # -- ordered replies ------------------------------------------------

    def _answer(self, result: Deferred[bytes], lines: list[bytes]) -> _Reply:
        """Queue the reply to ``lines`` (one request, or a group of IAMATs)."""
        slot = _Reply(len(lines))
        self._replies.append(slot)
        self._since_run.append(slot)
        self._outstanding += slot.count
        if self._outstanding >= self.factory.limits.max_outstanding:
            self.pause_reading("outstanding")
        result.addCallbacks(self._fill, self._internal_error, callbackArgs=(slot,), errbackArgs=(slot, lines))
        return slot

    def _internal_error(self, failure: Any, slot: _Reply, lines: list[bytes]) -> None:
        log.failure("{who} internal error on {line}", failure, who=self.who, line=logs.loggable(lines[0]))
        self._fill(b"".join([b"? " + line + b"\n" for line in lines]), slot)

    def _fill(self, data: bytes, slot: _Reply) -> None:
        """A reply is ready: it is written at the end of this reactor turn,
        with the others filled in the same turn (a store batch answers many
        requests at once; one write each cost the reactor a few microseconds),
        in request order, each reply whole."""
        slot.fill(data)
        if self._flush_call is None:
            self._flush_call = self.node.clock.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        ready: list[_Reply] = []
        while self._replies and self._replies[0].data is not None:
            ready.append(self._replies.popleft())
        while self._since_run and self._since_run[0].data is not None:
            self._since_run.popleft()  # answered: no WHATSAT needs to wait for it
        answered = sum([slot.count for slot in ready])
        self._outstanding -= answered
        if ready and not self._closing:
            out = b"".join([slot.data for slot in ready])  # type: ignore[misc]
            if out.count(b"\n") == answered:  # a line per request: logged together
                logs.wire_block(self.who, "sent", out)
            else:  # a WHATSAT's reply is one log line, its newlines escaped
                for slot in ready:
                    _log_sent(self.who, slot)
            self.transport.write(out)
        if self._outstanding <= self.factory.limits.max_outstanding // 2:
            self.resume_reading("outstanding")
        self._close_if_idle()

    def pause_reading(self, why: str) -> None:
        """Stop reading requests for ``why`` (until resume_reading of each reason)."""
        if not self._paused and not self._lost and not self._read_closed:
            self.transport.pauseProducing()
        self._paused.add(why)

    def resume_reading(self, why: str) -> None:
        if why in self._paused:
            self._paused.discard(why)
            # (after a half-close, reading again would report the end again)
            if not self._paused and not self._lost and not self._read_closed:
                self.transport.resumeProducing()

    def _close_if_idle(self) -> None:
        if self._eof and not self._replies and not self._closing:
            self._closing = True
            self._lose_connection()
            if self._cut_off_unread:
                self._cut_off_later()


def _log_sent(who: str, slot: _Reply) -> None:
    data: bytes = slot.data  # type: ignore[assignment]
    if data.count(b"\n") == slot.count:
        logs.wire_block(who, "sent", data)
    else:
        logs.wire(who, "sent", data.rstrip(b"\n"))


class ClientConnectionFactory(Factory):
    """Builds :class:`ClientConnection` and keeps what they share."""

    protocol = ClientConnection  # type: ignore[assignment]
    noisy = False

    def __init__(self, node: Node, max_line: int, max_future_ns: int, clock_ns: Callable[[], int],
                 limits: Limits | None = None):
        self.node = node
        self.limits = limits or Limits()
        self.max_line = max_line
        self.max_future_ns = max_future_ns
        self.clock_ns = clock_ns
        self.connections: set[ClientConnection] = set()
        self._refusals = logs.Throttle(  # ten a second at most
            node.clock, log.warn,
            "{n} more client connection(s) refused in the last {window} (max_connections; the last: {last})")

    def stopFactory(self) -> None:  # noqa: N802 (Twisted's name: the port stopped listening)
        self._refusals.close()

    def buildProtocol(self, addr: Any) -> ClientConnection | None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            host, port, n = getattr(addr, "host", "?"), getattr(addr, "port", "?"), len(self.connections)
            if self._refusals.allow(f"{host}:{port}"):
                log.warn("{host}:{port} refused: {n} connections open (max_connections)",
                         host=host, port=port, n=n)
            return None
        return super().buildProtocol(addr)  # type: ignore[return-value]


@dataclass(frozen=True)
class Limits:
    """A node's client connection limits ([herd] in the config; defaults as there)."""

    max_connections: int = HerdConfig.max_connections
    idle_timeout: float = HerdConfig.idle_timeout  # 0: none
    max_outstanding: int = HerdConfig.max_outstanding
