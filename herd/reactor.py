"""The reactor a node runs on: Twisted's epoll reactor without two costs
that it pays at every wake-up, whatever the wake-up carries.

1. Writes wait for a poll round. A Twisted transport buffers each write and
   asks epoll to report the socket writable (Twisted issue 5303), so every
   reply costs one more turn of the loop: two ``epoll_ctl`` calls, an
   ``epoll_wait`` that returns at once, the timed calls checked again. Here a
   transport that starts writing is set aside, and written just before the
   reactor next polls: after the turn's events and its timed calls, so that
   the writes of one turn still leave together, as before. Only a transport
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
``_doReadOrWrite``, so errors disconnect it the same way.
"""

from __future__ import annotations

import errno
from select import EPOLLOUT
from typing import Any

from twisted.internet.epollreactor import EPollReactor


class HerdReactor(EPollReactor):
    def __init__(self) -> None:
        self._prompt: dict[Any, None] = {}  # writers to write before the next poll, in order
        super().__init__()

    def addWriter(self, writer: Any) -> None:
        fd = writer.fileno()
        if fd == -1 or fd in self._writes:
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
        self._write_prompt()
        try:
            events = self._poller.poll(-1 if timeout is None else timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables, dispatch = self._selectables, self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is not None:
                dispatch(selectable, fd, event)

    doIteration = doPoll

    def _write_prompt(self) -> None:
        """Write every writer set aside. One that cannot send all its data
        stays a writer (its ``doWrite`` did not call ``stopWriting``) and goes
        to epoll; so does one that starts writing again during this pass."""
        if not self._prompt:
            return
        for writer in list(self._prompt):
            if writer in self._prompt:  # not removed by an earlier writer's doWrite
                self._doReadOrWrite(writer, writer.fileno(), EPOLLOUT)
        left, self._prompt = self._prompt, {}
        for writer in left:
            super().addWriter(writer)


def install() -> HerdReactor:
    """Install a HerdReactor as ``twisted.internet.reactor`` (before anything
    imports the default one)."""
    from twisted.internet.main import installReactor

    reactor = HerdReactor()
    installReactor(reactor)
    return reactor
