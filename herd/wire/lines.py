"""Line framing shared by client and peer connections.

A line ends with ``\\n``; one trailing ``\\r`` is dropped. A line longer than
``max_line`` bytes (terminator excluded) is reported once through
:meth:`LineProtocol.line_too_long` and nothing after it is read.
"""

from __future__ import annotations

from twisted.internet.protocol import Protocol


class LineProtocol(Protocol):
    max_line: int = 4096

    _buffer: bytes = b""
    _stopped_reading: bool = False

    def dataReceived(self, data: bytes) -> None:
        if self._stopped_reading:
            return
        buffer = self._buffer + data
        if b"\n" in data:
            *lines, buffer = buffer.split(b"\n")
            if b"\r" not in data and b"\r" not in self._buffer and max(map(len, lines)) <= self.max_line:
                self.lines_received(lines)  # the usual read: no CR, no line too long
                if self._stopped_reading:
                    return
                lines = []
            for line in lines:
                if line.endswith(b"\r"):
                    line = line[:-1]
                if len(line) > self.max_line:
                    self._overflow()
                    return
                self.line_received(line)
                if self._stopped_reading:
                    return
        self._buffer = buffer
        if len(buffer) > self.max_line and not (
            len(buffer) == self.max_line + 1 and buffer.endswith(b"\r")
        ):
            self._overflow()

    def flush_partial_line(self) -> None:
        """Treat an unterminated last line as a line (the peer half-closed)."""
        line, self._buffer = self._buffer, b""
        if line and not self._stopped_reading:
            self.line_received(line[:-1] if line.endswith(b"\r") else line)

    def stop_reading(self) -> None:
        """Ignore all further input."""
        self._stopped_reading = True
        self._buffer = b""

    def _overflow(self) -> None:
        self.stop_reading()
        self.line_too_long()

    def lines_received(self, lines: list[bytes]) -> None:
        """The complete lines of one read (terminators removed, none too long),
        in order; by default each goes to line_received, until reading stops."""
        for line in lines:
            self.line_received(line)
            if self._stopped_reading:
                return

    def line_received(self, line: bytes) -> None:
        raise NotImplementedError

    def line_too_long(self) -> None:
        raise NotImplementedError
