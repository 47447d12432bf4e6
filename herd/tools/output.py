"""Standard output of commands whose reader may go away (``herd check | head -1``).

Python raises BrokenPipeError on such a write, and again when it flushes
stdout at exit; these helpers point stdout at /dev/null instead, so a
command ends with its own exit status and no traceback.
"""

from __future__ import annotations

import os
import select
import sys
from typing import Any


def stdout_gone() -> None:
    """The reader of stdout went away: what is written from now on, and the
    interpreter's last flush, go to /dev/null."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def stdout_broken() -> bool:
    """Whether stdout's reader went away (a pipe or socket with no reader
    left): a BrokenPipeError may come from any socket, this tells whether it
    was stdout's."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError):  # no descriptor: nothing to tell
        return False


def print_out(text: str) -> bool:
    """Print ``text`` (flushed); False, and nothing raised, when the reader
    of stdout went away."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        stdout_gone()
        return False
    return True


class Interruption:
    """Whether the reactor stopped before a one-shot command finished (Ctrl-C,
    SIGTERM): the requests it cut short fail, and would show their nodes as
    unreachable, a guess. Such a command prints no verdict and exits 130,
    as ``herd client`` does (README: Ctrl-C of a one-shot command)."""

    EXIT = 130

    def __init__(self, reactor: Any) -> None:
        self.finished = False  # set by the command once its output is written
        self.stopped = False
        reactor.addSystemEventTrigger("before", "shutdown", self._stopping)

    def _stopping(self) -> None:
        self.stopped = not self.finished
