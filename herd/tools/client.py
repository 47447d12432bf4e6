"""``herd client HOST:PORT [LINE...]``: send lines to a node and print its replies.

Exit status (SPEC 6): 0 when every reply was an answer, 1 when any reply line
was a refusal (``? ...``) or the node could not be reached, stopped answering,
closed without a reply or in the middle of one, 2 for a bad address or
--timeout (usage).

With LINEs: send them, half-close, print everything until the node closes or
``timeout`` seconds pass without data. Without: interactive, lines from stdin go
out as they are typed and replies are printed as they arrive; at end of input
the same drain follows. Plain blocking sockets and a selector: this is a tool
for people and tests, not the serving path.
"""

from __future__ import annotations

import math
import os
import re
import selectors
import socket
import sys
import time

from herd.tools.output import stdout_gone

_ADDRESS = re.compile(r"(?:\[(?P<v6>[^\[\]\s]+)\]|(?P<host>[^:\[\]\s]+)):(?P<port>[0-9]+)\Z",
                      re.ASCII)
_CHUNK = 65536


class _StdoutClosed(Exception):
    """Whoever reads our output went away (``herd client ... | head -1``)."""


def run_client(address: str, lines: list[str], timeout: float) -> int:
    """Talk to the node at ``address``; return the process exit status."""
    try:
        host, port = parse_address(address)
    except ValueError as err:
        return _fail(str(err), 2)
    if not (math.isfinite(timeout) and timeout > 0):
        return _fail(f"bad timeout {timeout} (expected a positive number of seconds)", 2)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as err:
        return _fail(f"cannot connect to {address}: {_reason(err)}", 1)
    with sock:
        sock.settimeout(None)
        try:
            return _talk(sock, address, lines, timeout)
        except _StdoutClosed:
            return 0


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[ipv6]:port`` -> (host, port); ValueError, one line, if malformed."""
    match = _ADDRESS.match(address)
    port = int(match["port"]) if match else 0
    if match is None or not 1 <= port <= 65535:
        raise ValueError(f"bad address {address!r} "
                         "(expected HOST:PORT or [IPv6]:PORT, port 1..65535)")
    return match["v6"] or match["host"], port


def _talk(sock: socket.socket, address: str, lines: list[str], timeout: float) -> int:
    session = _Session(sock, timeout, None if lines else _stdin_fd())
    session.asked = any(line.strip() for line in lines)
    failure: OSError | None = None
    try:
        if lines:
            sock.sendall(b"".join(line.encode("utf-8", "surrogateescape") + b"\n"
                                  for line in lines))
        if session.stdin_fd is None:
            session.half_close()
    except OSError as err:
        failure = err  # still print whatever the node said before it went away
    closed = False
    try:
        closed = session.run()
    except OSError as err:
        failure = failure or err
    if failure is not None:
        return _fail(f"connection to {address} lost: {_reason(failure)}", 1)
    if not closed:
        return _fail(f"{address} sent nothing for {timeout:g} s and did not close the connection "
                     "(some replies may be missing)", 1)
    if session.asked and not session.last_byte:
        return _fail(f"{address} closed the connection without a reply", 1)
    if session.last_byte not in (b"", b"\n"):
        return _fail(f"{address} closed the connection in the middle of a reply", 1)
    return 1 if session.refused else 0


class _Session:
    """Shuttles stdin lines to the socket and socket bytes to stdout."""

    def __init__(self, sock: socket.socket, timeout: float, stdin_fd: int | None) -> None:
        self.sock = sock
        self.timeout = timeout
        self.stdin_fd = stdin_fd
        self.pending = b""  # an unterminated line read from stdin
        self.refused = False  # a reply line began with "? " (the node refused a request)
        self.asked = False  # a line that is not blank was sent: a reply is due
        self.last_byte = b""  # of what the node sent (b"": nothing)
        self._line_head = b""  # the first bytes (at most 2) of the reply line being received
        self.deadline = None if stdin_fd is not None else time.monotonic() + timeout
        self.selector = _selector()
        self.selector.register(sock, selectors.EVENT_READ)
        if stdin_fd is not None:
            self.selector.register(stdin_fd, selectors.EVENT_READ)

    def run(self) -> bool:
        """Until the node closes (True), or ``timeout`` s without data once our
        side is done (False)."""
        with self.selector:
            while (wait := self._wait()) is None or wait > 0:
                ready = {key.fileobj for key, _ in self.selector.select(wait)}
                if self.sock in ready and not self._receive():
                    return True
                if self.stdin_fd is not None and self.stdin_fd in ready:
                    self._read_stdin()
        return False

    def half_close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # already gone: the drain that follows notices
        self.deadline = time.monotonic() + self.timeout

    def _wait(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def _receive(self) -> bool:
        data = self.sock.recv(_CHUNK)  # ConnectionResetError: the node dropped us (run() says so)
        if data:
            self._note_refusals(data)
            self.last_byte = data[-1:]
            _emit(data)
            if self.deadline is not None:
                self.deadline = time.monotonic() + self.timeout
        return bool(data)

    def _note_refusals(self, data: bytes) -> None:
        """Set ``refused`` if a reply line in ``data`` begins with ``? `` (lines
        may be split anywhere between reads)."""
        text = self._line_head + data
        if text.startswith(b"? ") or b"\n? " in text:
            self.refused = True
        self._line_head = text[text.rfind(b"\n") + 1:][:2]

    def _read_stdin(self) -> None:
        assert self.stdin_fd is not None
        chunk = os.read(self.stdin_fd, _CHUNK)
        if chunk:
            done, newline, self.pending = (self.pending + chunk).rpartition(b"\n")
            if newline:
                self.sock.sendall(done + newline)
                self.asked = self.asked or bool(done.strip())
            return
        if self.pending:
            self.sock.sendall(self.pending + b"\n")
            self.asked = self.asked or bool(self.pending.strip())
        self.selector.unregister(self.stdin_fd)
        self.stdin_fd = None
        self.half_close()


def _selector() -> selectors.BaseSelector:
    # poll/select, not epoll: epoll refuses regular files, and stdin may be one.
    if hasattr(selectors, "PollSelector"):
        return selectors.PollSelector()
    return selectors.SelectSelector()


def _stdin_fd() -> int | None:
    try:
        return sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):
        return None  # no usable stdin: behave as if it were empty


def _emit(data: bytes) -> None:
    out = sys.stdout.buffer
    try:
        out.write(data)
        out.flush()
    except BrokenPipeError:
        stdout_gone()
        raise _StdoutClosed from None


def _reason(err: OSError) -> str:
    return err.strerror or str(err) or type(err).__name__


def _fail(message: str, status: int) -> int:
    print(f"herd client: {message}", file=sys.stderr)
    return status
