"""The reactor a node runs on: Twisted's epoll reactor without two costs
that it pays at every wake-up, whatever the wake-up carries.

1. Writes wait for a poll round. A Twisted transport buffers each write and
   asks epoll to report the socket writable (Twisted issue 5303), so every
   reply costs one more turn of the loop: two ``epoll_ctl`` calls, an
   ``epoll_wait`` that returns at once, the timed calls checked again. Here a
   transport that starts writing is set aside, and written just before the
   reactor next polls: after the turn's events and its timed calls, so that
   the writes of one turn still leave together, as before (unless a caller
   asks for one transport's writes at once: ``write_now``). Only a transport
   whose socket cannot take all its data is handed to epoll, as Twisted does.
2. A log context per event. The epoll reactor runs each event inside
   ``twisted.python.log.callWithLogger``, a context stack that only the legacy
   log's ``system`` field reads; herd's logs do not show that field.

On the project's 2-core bench machine the nodes of a line at 1,000
updates/s spent 7-9% less CPU per update on it (docs/BENCHMARKS.md, twelfth
session).

Contract kept: ``addWriter``/``removeWriter``/``getWriters``/``removeAll``
behave as Twisted's reactor interfaces say (a writer set aside is a writer);
a transport's ``doWrite`` runs as the epoll reactor would run it, through
``_doReadOrWrite``, so errors disconnect it the same way; an error that
escapes an event is logged and the next event runs; and code that the writes
run (``connectionLost`` after a flushed close, a producer resumed,
``connectionMade`` of a dialled connection) has its timed calls, or a stop,
counted in the poll's timeout, as if it had run before the loop computed it.
"""

from __future__ import annotations

import errno
from select import EPOLLOUT
from typing import Any

from twisted.internet.epollreactor import EPollReactor
from twisted.logger import Logger

_log = Logger()


class HerdReactor(EPollReactor):
    def __init__(self) -> None:
        self._prompt: dict[Any, None] = {}  # writers to write before the next poll, in order
        self._moved_sooner = False  # a timed call was made due sooner since the last poll
        super().__init__()

    def _moveCallLaterSooner(self, delayedCall: Any) -> None:  # noqa: N802 (Twisted's name)
        self._moved_sooner = True
        super()._moveCallLaterSooner(delayedCall)

    def addWriter(self, writer: Any) -> None:
        fd = writer.fileno()
        if fd == -1 or fd in self._writes or self._continuousPolling.isWriting(writer):
            super().addWriter(writer)
        else:
            self._prompt[writer] = None

    def removeWriter(self, writer: Any) -> None:
        if writer in self._prompt:
            del self._prompt[writer]
        else:
            super().removeWriter(writer)

    def getWriters(self) -> list[Any]:
        return super().getWriters() + list(self._prompt)

    def removeAll(self) -> list[Any]:
        prompt = list(self._prompt)
        self._prompt.clear()
        removed = super().removeAll()
        return removed + [writer for writer in prompt if writer not in removed]

    def doPoll(self, timeout: float | None) -> None:
        if self._prompt:
            self._write_prompt()
            timeout = self._timeout_after_writes(timeout)
        try:
            events = self._poller.poll(-1 if timeout is None else timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables, dispatch = self._selectables, self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            # An error escaping _doReadOrWrite (from a connectionLost, say) is
            # logged and the next event runs, as under callWithLogger.
            try:
                dispatch(selectable, fd, event)
            except KeyboardInterrupt:
                raise
            except BaseException:
                _log.failure("Unhandled error handling an event of {selectable!r}", selectable=selectable)

    doIteration = doPoll

    def write_now(self, writer: Any) -> None:
        """Write ``writer``'s data now, in the middle of a turn, if it waits to
        be written before the next poll (what it cannot send stays and is
        written as any other). For a caller that wants another process to start
        on its data while this one goes on with the turn (storage.store: a
        batch of records to Redis)."""
        if writer in self._prompt:
            self._write_now(writer)

    def _write_now(self, writer: Any) -> None:
        """``doWrite`` as an epoll event would run it, errors handled alike."""
        try:
            self._doReadOrWrite(writer, writer.fileno(), EPOLLOUT)
        except KeyboardInterrupt:
            raise
        except BaseException:
            _log.failure("Unhandled error handling an event of {selectable!r}", selectable=writer)

    def _write_prompt(self) -> None:
        """Write every writer set aside. One that cannot send all its data
        stays a writer (its ``doWrite`` did not call ``stopWriting``) and goes
        to epoll; so does one that starts writing during this pass."""
        for writer in list(self._prompt):
            if writer in self._prompt:  # not removed by an earlier writer's doWrite
                self._write_now(writer)
        while self._prompt:  # may grow while a writer epoll refuses is disconnected
            writer = next(iter(self._prompt))
            del self._prompt[writer]
            if writer.fileno() != -1:
                self._watch(writer)

    def _watch(self, writer: Any) -> None:
        """Hand ``writer`` to epoll; one that epoll cannot watch (ENOSPC, say)
        is disconnected, since its data would never leave."""
        try:
            super().addWriter(writer)
        except OSError as err:
            try:
                self._disconnectSelectable(writer, err, False)
            except KeyboardInterrupt:
                raise
            except BaseException:
                _log.failure("Unhandled error disconnecting {selectable!r}", selectable=writer)

    def _timeout_after_writes(self, timeout: float | None) -> float | None:
        """The poll's timeout, made before the writes ran code of their own
        (``connectionLost`` once a close is flushed, a producer resumed,
        ``connectionMade`` of a dialled connection): the calls that code
        scheduled, and a stop, count too, or epoll would sleep past them."""
        if self._justStopped or not self.running:
            return 0
        if not self._newTimedCalls and not self._moved_sooner:
            return timeout  # the usual case: the writes scheduled nothing
        self._moved_sooner = False
        due = self.timeout()
        if due is None:
            return timeout
        return due if timeout is None else min(timeout, due)


def install() -> HerdReactor:
    """Install a HerdReactor as ``twisted.internet.reactor`` (before anything
    imports the default one)."""
    from twisted.internet.main import installReactor

    reactor = HerdReactor()
    installReactor(reactor)
    return reactor

