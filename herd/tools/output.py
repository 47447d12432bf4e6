"""Standard output of commands whose reader may go away (``herd check | head -1``).

Python raises BrokenPipeError on such a write, and again when it flushes
stdout at exit; these helpers point stdout at /dev/null instead, so a
command ends with its own exit status and no traceback.
"""

from __future__ import annotations

import os
import sys


def stdout_gone() -> None:
    """The reader of stdout went away: what is written from now on, and the
    interpreter's last flush, go to /dev/null."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def print_out(text: str) -> bool:
    """Print ``text`` (flushed); False, and nothing raised, when the reader
    of stdout went away."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        stdout_gone()
        return False
    return True
