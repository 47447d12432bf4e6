"""A log file rotated by size, with a bounded number of old files kept.

Used by the node's access log (herd.logs) and by ``herd up`` for the output
of the processes it runs. No Twisted here: ``herd up`` writes from plain
threads (one writer per file), a node from its reactor thread.
"""

from __future__ import annotations

import os
from typing import BinaryIO


class RotatingFile:
    """Appends to ``path``; a write that would take the file past
    ``max_bytes`` first renames it aside: ``path`` becomes ``path.1``,
    ``path.1`` becomes ``path.2`` and so on up to ``path.<keep>``, the oldest
    is deleted. So at most ``keep + 1`` files exist, each at most
    ``max_bytes`` long unless one line alone is longer: a write of many
    lines (a buffered access log) is split between files at a line's end
    (with ``keep`` 0, a write goes whole into the emptied file).
    With ``keep`` 0 the file starts again empty.

    Opening creates missing parent directories and continues an existing
    file (its size counts). Raises OSError when the file cannot be opened;
    ``write`` raises OSError when it cannot write or rotate."""

    def __init__(self, path: str | os.PathLike[str], max_bytes: int, keep: int):
        self.path = os.fspath(path)
        self.max_bytes = max_bytes
        self.keep = keep
        parent = os.path.dirname(self.path)
        if parent and not os.path.exists(parent):  # (a file there: open says "Not a directory")
            os.makedirs(parent, exist_ok=True)
        self._file: BinaryIO = open(self.path, "ab")  # noqa: SIM115 (open until close())
        self._size = self._file.tell()

    @property
    def size(self) -> int:
        """Bytes in the current file."""
        return self._size

    def write(self, data: bytes) -> None:
        """Append ``data`` (whole lines, so that no line is split across files)."""
        if not self.keep and self._size and self._size + len(data) > self.max_bytes:
            self.rotate()  # nothing is kept: filling the file first would only lose those lines
        while self.keep and self._size + len(data) > self.max_bytes:
            # The lines that still fit, up to the last line's end within the room left.
            fit = data.rfind(b"\n", 0, max(self.max_bytes - self._size, 0)) + 1
            if fit == 0 and not self._size:  # a line longer than a file: alone in one
                fit = data.find(b"\n") + 1 or len(data)
            if fit:
                self._file.write(data[:fit])
                self._size += fit
                data = data[fit:]
            if not data:
                return
            self.rotate()
            if self._size:  # the new file is not empty (another writer?): the rest goes there
                break
        self._file.write(data)
        self._size += len(data)

    def flush(self) -> None:
        self._file.flush()

    def rotate(self) -> None:
        """Rename the current file aside (see the class) and start a new one.
        Should a rename fail, writing goes on at the end of the current file."""
        self._file.close()
        try:
            if not self.keep:
                os.truncate(self.path, 0)
            for n in range(self.keep, 0, -1):
                older = self.path if n == 1 else f"{self.path}.{n - 1}"
                if os.path.exists(older):
                    os.replace(older, f"{self.path}.{n}")
        finally:
            self._file = open(self.path, "ab")  # noqa: SIM115
            self._size = self._file.tell()

    def close(self) -> None:
        self._file.close()
