"""Stand-ins shared by tests: a peer connection that records what is sent on
it, and AT records built from a few numbers. (Real Redis and real node
processes come from harness.py and cluster.py; nothing here mocks Redis.)"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed

from herd.wire.client import AtRecord, parse_at_line


class PeerConn:
    """A peer connection as herd.peer.links sees it (herd.peer.links.PeerConnection):
    it records the lines sent on it, as they are sent (so ``flush_lines`` has
    nothing left to write); ``transport.abortConnection`` sets ``aborted``."""

    connected = 1
    peer_name: bytes | None = None
    lines_in = lines_out = beat_in = beat_out = quiet_in = quiet_out = 0

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.aborted = False
        owner = self

        class Transport:
            def abortConnection(self) -> None:  # noqa: N802 (Twisted's name)
                owner.aborted = True

            def loseConnection(self) -> None:  # noqa: N802
                owner.aborted = True

        self.transport: Any = Transport()

    def send_line(self, line: bytes) -> None:
        self.lines_out += 1
        self.lines.append(line)

    def send_lines(self, lines: list[bytes]) -> None:
        for line in lines:
            self.send_line(line)

    # A transport that always takes more, unless a test sets ``full`` to a
    # Deferred that fires once it does.
    full: Deferred[None] | None = None
    writable_asked = 0

    def writable(self) -> Deferred[None]:
        self.writable_asked += 1
        return self.full if self.full is not None else succeed(None)

    def end_writable(self) -> None:
        pass

    closing = False

    def close(self) -> None:
        self.closing = True
        self.transport.loseConnection()

    def flush_lines(self) -> None:
        """Nothing to do: send_line recorded each line at once."""

    def take(self) -> list[bytes]:
        """The lines sent since the last take."""
        lines, self.lines = self.lines, []
        return lines


def at_record(client: str | int, seconds: str | int, server: str = "B", skew: str = "+0.100000000",
              location: str = "+1+1") -> AtRecord:
    """The AT record ``AT <server> <skew> <client> <location> <seconds>``
    (a bare number as client becomes ``c<number>``)."""
    client_id = f"c{client}" if isinstance(client, int) else client
    record = parse_at_line(f"AT {server} {skew} {client_id} {location} {seconds}".encode())
    assert record is not None
    return record
