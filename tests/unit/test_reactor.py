"""herd.reactor.HerdReactor: a write leaves before the reactor next polls,
without a round through epoll (or at once, asked with write_now); every write still arrives whole and in order
(a socket that cannot take it all is handed to epoll), also when the
connection closes right after writing; the poll does not sleep past calls
that the writes' own code made due; errors are handled as Twisted's epoll
reactor handles them. Real TCP on loopback, a reactor of its own driven
turn by turn (never installed; ``run()`` never called)."""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Iterator
from select import EPOLLOUT
from typing import Any, cast

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.python.failure import Failure

from herd.reactor import HerdReactor


class Recorded(Protocol):
    connections: list[Recorded]

    def connectionMade(self) -> None:
        self.connections.append(self)


class WatchedPoller:
    """The reactor's epoll object, noting every fd it is asked to watch for writing."""

    def __init__(self, poller: Any) -> None:
        self._poller = poller
        self.watched_for_writing: list[int] = []

    def register(self, fd: int, flags: int) -> None:
        self._note(fd, flags)
        self._poller.register(fd, flags)

    def modify(self, fd: int, flags: int) -> None:
        self._note(fd, flags)
        self._poller.modify(fd, flags)

    def _note(self, fd: int, flags: int) -> None:
        if flags & EPOLLOUT:
            self.watched_for_writing.append(fd)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._poller, name)


@pytest.fixture
def reactor() -> Iterator[HerdReactor]:
    r = HerdReactor()
    yield r
    for selectable in r.removeAll():
        selectable.connectionLost(Failure(ConnectionDone()))
    r.removeReader(r.waker)  # type: ignore[attr-defined]
    r.waker.connectionLost(None)  # type: ignore[attr-defined]
    r._poller.close()  # type: ignore[attr-defined]


def turn(reactor: HerdReactor, until: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not until():
        assert time.monotonic() < deadline, "the reactor did not get there"
        reactor.iterate(0.01)


def connected(reactor: HerdReactor, kind: type[Recorded] = Recorded) -> tuple[Recorded, socket.socket]:
    """A server protocol on ``reactor`` and the plain client socket talking to it."""
    connections: list[Recorded] = []
    Recorded.connections = connections
    factory = Factory.forProtocol(kind)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    turn(reactor, lambda: connections)
    port.stopListening()
    return connections[0], client


def received(client: socket.socket, wanted: int, reactor: HerdReactor) -> bytes:
    client.setblocking(False)
    data = bytearray()

    def read() -> bool:
        try:
            chunk = client.recv(1 << 20)
        except BlockingIOError:
            return False
        data.extend(chunk)
        return len(data) >= wanted or not chunk

    turn(reactor, read)
    return bytes(data)


def test_a_write_leaves_in_the_next_turn_without_epoll(reactor: HerdReactor) -> None:
    server, client = connected(reactor)
    poller = WatchedPoller(reactor._poller)  # type: ignore[attr-defined]
    reactor._poller = poller  # type: ignore[attr-defined]
    assert server.transport is not None
    server.transport.write(b"AT one\n")
    server.transport.write(b"AT two\n")
    assert server.transport in reactor.getWriters()  # a writer set aside is a writer
    reactor.iterate(0)
    client.settimeout(5)
    assert client.recv(100) == b"AT one\nAT two\n"  # one turn, both writes in one send
    assert poller.watched_for_writing == []
    assert reactor.getWriters() == []


def test_write_now_sends_in_the_middle_of_a_turn_and_leaves_the_rest_of_the_turn_as_it_was(
        reactor: HerdReactor) -> None:
    server, client = connected(reactor)
    other, other_client = connected(reactor)
    assert server.transport is not None and other.transport is not None
    other.transport.write(b"AT later\n")
    server.transport.write(b"FCALL now\n")
    reactor.write_now(server.transport)  # no turn of the reactor
    client.settimeout(5)
    assert client.recv(100) == b"FCALL now\n"
    assert reactor.getWriters() == [other.transport]  # its write waits for the poll, as before
    reactor.write_now(server.transport)  # nothing to write: nothing happens
    reactor.iterate(0)
    other_client.settimeout(5)
    assert other_client.recv(100) == b"AT later\n"
    assert reactor.getWriters() == []


def test_more_than_the_socket_takes_goes_to_epoll_and_arrives_whole(reactor: HerdReactor) -> None:
    server, client = connected(reactor)
    payload = bytes(range(256)) * 32768  # 8 MB: more than the socket takes at once
    assert server.transport is not None
    server.transport.write(payload)
    reactor.iterate(0)
    assert server.transport in reactor.getWriters()  # still writing, now through epoll
    assert received(client, len(payload), reactor) == payload
    turn(reactor, lambda: reactor.getWriters() == [])


def test_a_connection_closed_after_writing_delivers_the_write_then_closes(reactor: HerdReactor) -> None:
    server, client = connected(reactor)
    assert server.transport is not None
    server.transport.write(b"AT last\n")
    server.transport.loseConnection()
    assert received(client, 1 << 30, reactor) == b"AT last\n"  # read until the end of the stream


def test_a_half_closed_write_side_still_sends_what_was_written(reactor: HerdReactor) -> None:
    server, client = connected(reactor)
    assert server.transport is not None
    server.transport.write(b"AT before the half-close\n")
    server.transport.loseWriteConnection()  # type: ignore[attr-defined]
    assert received(client, 1 << 30, reactor) == b"AT before the half-close\n"


def test_an_aborted_connection_is_no_writer_any_more(reactor: HerdReactor) -> None:
    server, client = connected(reactor)
    assert server.transport is not None
    server.transport.write(b"never sent")
    server.transport.abortConnection()  # type: ignore[attr-defined]
    reactor.iterate(0)
    assert reactor.getWriters() == []
    client.settimeout(5)
    try:
        assert client.recv(100) == b""
    except ConnectionResetError:
        pass  # aborted: a reset, never the data


def test_remove_all_returns_writers_set_aside(reactor: HerdReactor) -> None:
    server, _client = connected(reactor)
    assert server.transport is not None
    server.transport.write(b"pending")
    assert server.transport in reactor.removeAll()
    assert reactor.getWriters() == []


class RaisesWhenLost(Recorded):
    def connectionLost(self, reason: Any = None) -> None:
        raise RuntimeError("connectionLost broke")


def test_an_error_escaping_an_event_is_logged_and_the_next_events_still_run(reactor: HerdReactor) -> None:
    events: list[dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    try:
        broken, broken_client = connected(reactor, RaisesWhenLost)
        fine, fine_client = connected(reactor)
        fine.dataReceived = lambda data: fine.__dict__.setdefault("got", data)  # type: ignore[method-assign]
        broken_client.close()  # its event: connectionLost, which raises
        fine_client.sendall(b"IAMAT")
        turn(reactor, lambda: "got" in fine.__dict__)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert fine.__dict__["got"] == b"IAMAT"
    assert any("connectionLost broke" in str(e.get("log_failure", "")) for e in events), events


class DueWhenLost(Recorded):
    """Makes ``due`` run at once from connectionLost: a new timed call, or
    one set for later moved to now."""

    reactor: HerdReactor
    later: Any = None
    ran: list[str]

    def connectionLost(self, reason: Any = None) -> None:
        if self.later is None:
            self.reactor.callLater(0, self.ran.append, "new call")
        else:
            self.later.reset(0)


@pytest.mark.parametrize("move_sooner", [False, True])
def test_calls_made_due_by_the_writes_before_a_poll_are_not_slept_through(
        reactor: HerdReactor, move_sooner: bool) -> None:
    closing, client = connected(reactor, DueWhenLost)
    assert isinstance(closing, DueWhenLost) and closing.transport is not None
    turn(reactor, lambda: not reactor.getDelayedCalls())  # the port's closing done
    closing.reactor, closing.ran = reactor, []
    if move_sooner:
        closing.later = reactor.callLater(3.0, closing.ran.append, "moved call")
    closing.transport.write(b"bye")
    closing.transport.loseConnection()  # flushed by the writes before the next poll
    reactor.running = True  # as in run(): the poll may sleep until the next timer
    started = time.monotonic()
    reactor.runUntilCurrent()
    reactor.doIteration(reactor.timeout() or 3.0)  # as mainLoop: the timeout taken before the writes
    reactor.runUntilCurrent()
    assert closing.ran == ["moved call" if move_sooner else "new call"]
    assert time.monotonic() - started < 1.0  # not slept until a timer 3 s away
    client.settimeout(5)
    assert client.recv(10) == b"bye"


class RefusingPoller(WatchedPoller):
    """An epoll that cannot watch one fd for writing (as when the user's epoll watches are used up)."""

    refuse: int = -1

    def _note(self, fd: int, flags: int) -> None:
        if fd == self.refuse and flags & EPOLLOUT:
            raise OSError(errno.ENOSPC, "No space left on device")


class TellsWhenLost(Recorded):
    other: Recorded

    def connectionLost(self, reason: Any = None) -> None:
        assert self.other.transport is not None
        self.other.transport.write(b"AT lost " + type(reason.value).__name__.encode())


def test_a_writer_epoll_refuses_is_disconnected_and_what_that_writes_leaves(reactor: HerdReactor) -> None:
    refused, refused_client = connected(reactor, TellsWhenLost)
    other, other_client = connected(reactor)
    assert isinstance(refused, TellsWhenLost) and refused.transport is not None
    refused.other = other
    poller = RefusingPoller(reactor._poller)  # type: ignore[attr-defined]
    poller.refuse = cast(Any, refused.transport).fileno()
    reactor._poller = poller  # type: ignore[attr-defined]
    turn(reactor, lambda: not reactor.getDelayedCalls())  # the ports' closing done
    refused.transport.write(b"x" * 8_000_000)  # more than the socket takes: needs epoll
    reactor.running = True  # as in run(): the poll may sleep as long as no timer is due
    started = time.monotonic()
    reactor.doIteration(3.0)  # no timer: only the other transport's write may end this poll
    assert time.monotonic() - started < 1.0
    assert received(other_client, 15, reactor) == b"AT lost OSError"
    assert reactor.getWriters() == []
    refused_client.setblocking(True)
    refused_client.settimeout(5)
    while refused_client.recv(1 << 20):  # what was sent, then the end: it was closed
        pass
