"""The node's authenticated peer links: which connections are open to which
peer, and what each update is sent as on each (docs/PEER-PROTOCOL.md,
sections 5.1 and 5.2).

A link to a peer exists while at least one authenticated connection to it is
open, whichever side dialled it. Flooding sends each update once per peer:
on the connection its flood cursor (FloodCursor, below) runs on, or else
on its oldest open connection.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from herd.wire import peer as msg
from herd.wire.client import AtRecord
from herd.wire.peer import Position

log = Logger(namespace="herd")


# Heartbeats (docs/PEER-PROTOCOL.md, "Heartbeats"): beat() runs every
# BEAT_INTERVAL; a connection that sent nothing for QUIET_BEATS beats sends
# HB, and one that received nothing for DEAD_BEATS beats is closed, so a link
# whose packets vanish (a partition, a host gone) is redialled within seconds
# instead of waiting for TCP's retransmissions or its user timeout.
BEAT_INTERVAL = 0.5
QUIET_BEATS = 2  # 1 s without sending: an idle link costs one HB a second each way
DEAD_BEATS = 6  # 3 s without receiving (three heartbeats missed)
# Besides the 0.1 s tick, a K goes with the F lines to a peer once its cursor
# stepped over K_STEP log entries the peer has (FloodCursor.unsent), so under
# load the peer's offset stays about that far behind at most (what a reconnect
# sends again). With the F lines, the K costs the peer no read or Lua call of
# its own.
K_STEP = 256


class PeerConnection(Protocol):
    peer_name: bytes | None

    connected: int  # Twisted's Protocol.connected: 1 while the connection is open
    lines_in: int  # lines received from the peer since it authenticated
    lines_out: int  # lines sent on it
    beat_in: int  # lines_in and lines_out at the last beat ...
    beat_out: int
    quiet_in: int  # ... and for how many beats each has not moved
    quiet_out: int
    transport: Any

    def send_line(self, line: bytes) -> None: ...

    def send_lines(self, lines: list[bytes]) -> None: ...

    def flush_lines(self) -> None: ...

    def writable(self) -> Deferred[None]: ...

    def end_writable(self) -> None: ...

    closing: bool  # close() was called

    def close(self) -> None: ...


class FloodCursor:
    """How far this node's log has been flooded to one peer, on one connection.
    ``sent``: the last log position sent to it (None while a SYNC answer is
    under way: updates then go unchained). ``covered``: the last position such
    that every log entry up to it was sent to the peer, came from it, or was
    forwarded between the two as ``F`` (the peer knows whether it may lack one
    of those, docs/PEER-PROTOCOL.md 5.3). ``unsent``: how many entries after
    ``sent``, up to ``covered``, the peer has without being sent them."""

    __slots__ = ("conn", "sent", "covered", "unsent")

    def __init__(self, conn: PeerConnection, sent: Position | None, covered: Position | None):
        self.conn = conn
        self.sent = sent
        self.covered = covered
        self.unsent = 0

    def send_k(self) -> None:
        """``K <sent> <covered>``; ``sent`` := ``covered``."""
        self.conn.send_line(msg.log_moved(self.sent, self.covered))  # type: ignore[arg-type]
        self.sent = self.covered
        self.unsent = 0


Stored = tuple[AtRecord, Position, Position | None]  # a record, its log position, the one before it
LinkCallback = Callable[[bytes, PeerConnection], None]
LossCallback = Callable[[bytes, PeerConnection, PeerConnection | None], None]


class PeerLinks:
    """Registry of open authenticated peer connections, by peer name, and the
    flood cursor of each peer."""

    def __init__(self, neighbours: Iterable[bytes]):
        self.neighbours = frozenset(neighbours)
        self._open: dict[bytes, list[PeerConnection]] = {name: [] for name in self.neighbours}
        self._cursor: dict[bytes, FloodCursor] = {}
        self.on_link_up: list[LinkCallback] = []  # (peer, connection) when a link comes up
        self.on_connection_lost: list[LossCallback] = []  # (peer, lost, another open one)
        self.flooded = 0

    def is_neighbour(self, name: bytes) -> bool:
        return name in self.neighbours

    def set_neighbours(self, neighbours: Iterable[bytes]) -> None:
        """A config reload changed the neighbours: new ones may link from now
        on; the links to dropped ones close."""
        self.neighbours = frozenset(neighbours)
        for name in self.neighbours - self._open.keys():
            self._open[name] = []
        for name in list(self._open.keys() - self.neighbours):
            for conn in list(self._open[name]):
                _close(conn)  # (which removes it)
            if not self._open.get(name, True):
                del self._open[name]  # (else once its last connection is removed)

    def _forget_if_dropped(self, name: bytes) -> None:
        if name not in self.neighbours and not self._open.get(name):
            self._open.pop(name, None)

    def add(self, name: bytes, conn: PeerConnection, how: str) -> None:
        if name not in self.neighbours:  # dropped by a reload while it authenticated
            _close(conn)
            return
        conns = self._open[name]
        conns.append(conn)
        log.info("peer {peer} link up ({how}; {n} open connection(s))",
                 peer=name.decode(), how=how, n=len(conns))
        if len(conns) == 1:
            for callback in self.on_link_up:
                callback(name, conn)

    def remove(self, name: bytes, conn: PeerConnection) -> None:
        """``conn`` to ``name`` is gone, or closing: no traffic goes on it any
        more (a second call, at its end, does nothing)."""
        conns = self._open.get(name)
        if conns is None or conn not in conns:
            return
        conns.remove(conn)
        state = "still up" if conns else "down"
        log.info("peer {peer} connection dropped; link {state}", peer=name.decode(), state=state)
        if name in self._cursor and self._cursor[name].conn is conn:
            del self._cursor[name]
        for callback in self.on_connection_lost:
            callback(name, conn, conns[0] if conns else None)
        self._forget_if_dropped(name)

    def up(self) -> list[bytes]:
        """Names of peers with at least one open authenticated connection."""
        return sorted(name for name, conns in self._open.items() if conns)

    def open_connections(self, name: bytes) -> int:
        """How many authenticated connections to neighbour ``name`` are open."""
        return len(self._open[name])

    def first_connections(self) -> list[tuple[bytes, PeerConnection]]:
        """(peer, its oldest open connection) for every linked peer."""
        return [(name, conns[0]) for name, conns in sorted(self._open.items()) if conns]

    def forward(self, at_lines: list[bytes], source: bytes | None) -> frozenset[bytes]:
        """Cut-through: send updates known to be newer than what we hold, before
        they are stored here, as ``F <AT line>`` each, to every peer with a
        running flood cursor except ``source``. Returns the names they went to,
        for :meth:`flood` once each update is stored (peers without a cursor
        get it from there, as ``U``)."""
        sent = []
        forwards: list[bytes] | None = None
        for name, cursor in self._cursor.items():
            if cursor.sent is not None and name != source:
                if forwards is None:
                    forwards = [msg.forward(at_line) for at_line in at_lines]
                if cursor.unsent >= K_STEP:
                    cursor.send_k()
                cursor.conn.send_lines(forwards)
                sent.append(name)
        self.flooded += len(sent) * len(at_lines)
        return frozenset(sent)

    def flood(self, record: AtRecord, position: Position, previous: Position | None,
              source: bytes | None = None, forwarded: frozenset[bytes] = frozenset()) -> int:
        """Send an update stored at ``position`` in our log (right after
        ``previous`` there) to every linked peer except ``source`` and except
        those it was forwarded to.

        Where a flood cursor runs (see herd.peer.reconcile) the update goes on
        its connection as ``U <last sent> <position>``: every log entry since
        the last one sent came from the peer or went between us as ``F``, and
        the peer advances its offset over them unless it knows it may lack one.
        If ``previous`` shows an entry we never saw stored (its Redis reply was
        lost), the cursor breaks: the peer is sent ``PULL`` and fetches the gap
        with a SYNC. Elsewhere the update goes unchained on the oldest
        connection."""
        sent = 0
        for name, conns in self._open.items():
            if conns:
                sent += self._flood_to(name, conns, record, position, previous, source, forwarded)
        self.flooded += sent
        return sent

    def flood_group(self, stored: Sequence[Stored], source: bytes | None, forwarded: frozenset[bytes]) -> int:
        """:meth:`flood` of each of ``stored`` in order, all with these
        ``source`` and ``forwarded``. They were stored together, in one batch:
        each one's previous is the one before it. Where a peer's flood cursor
        only moves on over them (they came from it, or were forwarded to it),
        it does so for the whole group at once."""
        sent = 0
        first_previous, last = stored[0][2], stored[-1][1]
        for name, conns in self._open.items():
            if not conns:
                continue
            cursor = self._cursor.get(name)
            if cursor is None or cursor.sent is None or cursor.covered != first_previous:
                pass  # not live, or a broken chain: one by one
            elif name == source or name in forwarded:
                cursor.covered = last
                cursor.unsent += len(stored)
                continue
            for record, position, previous in stored:
                sent += self._flood_to(name, conns, record, position, previous, source, forwarded)
        self.flooded += sent
        return sent

    def _flood_to(self, name: bytes, conns: list[PeerConnection], record: AtRecord, position: Position,
                  previous: Position | None, source: bytes | None, forwarded: frozenset[bytes]) -> int:
        """:meth:`flood` to the linked peer ``name``; 1 if a U went to it."""
        cursor = self._cursor.get(name)
        if cursor is not None and cursor.sent is not None:
            if cursor.covered == previous:
                cursor.covered = position
            else:
                del self._cursor[name]
                cursor.conn.send_line(msg.PULL)
                cursor = None
        live = cursor if cursor is not None and cursor.sent is not None else None
        if live is not None and (name == source or name in forwarded):
            live.unsent += 1
            return 0
        if name == source:
            return 0
        if live is not None:
            live.conn.send_line(msg.update(live.sent, position, record.line))
            live.sent, live.unsent = position, 0
        else:
            conn = cursor.conn if cursor is not None else conns[0]
            conn.send_line(msg.update(None, position, record.line))
        return 1

    def send_log_moved(self) -> int:
        """Tell each peer with a running cursor how far our log moved with
        updates that came from it or went between us as F (``K <sent>
        <covered>``), so its offset keeps up and a later SYNC does not walk
        over them. Called several times a second."""
        sent = 0
        for cursor in self._cursor.values():
            if cursor.sent is not None and cursor.covered != cursor.sent:
                cursor.send_k()
                sent += 1
        return sent

    def start_unchained(self, name: bytes, conn: PeerConnection) -> None:
        """A SYNC answer to ``name`` starts on ``conn``: updates flooded meanwhile go
        on the same connection, unchained, so they arrive before its SYNC-END."""
        if conn in self._open.get(name, ()):
            self._cursor[name] = FloodCursor(conn, None, None)

    def chain_from(self, name: bytes, conn: PeerConnection, position: Position) -> None:
        """From now on flood to ``name`` over ``conn``, chained on from ``position``
        (the SYNC-END just sent on ``conn``: the peer has our log up to it)."""
        if conn in self._open.get(name, ()):
            self._cursor[name] = FloodCursor(conn, position, position)

    def beat(self, exempt: Container[PeerConnection] = ()) -> None:
        """One heartbeat tick over every open connection (see BEAT_INTERVAL):
        send HB where nothing was sent lately; close a connection that has
        been silent for DEAD_BEATS, except those in ``exempt`` (connections
        this node has stopped reading from)."""
        for name, conns in self._open.items():
            for conn in list(conns):
                self._beat_out(conn)
                if conn not in exempt and self._silent(conn):
                    log.warn("peer {peer}: nothing received for {s:g} s; closing the connection",
                             peer=name.decode(), s=DEAD_BEATS * BEAT_INTERVAL)
                    conn.transport.abortConnection()

    @staticmethod
    def _beat_out(conn: PeerConnection) -> None:
        conn.quiet_out = conn.quiet_out + 1 if conn.lines_out == conn.beat_out else 0
        if conn.quiet_out >= QUIET_BEATS:
            conn.send_line(msg.HEARTBEAT)
            conn.quiet_out = 0
        conn.beat_out = conn.lines_out

    @staticmethod
    def _silent(conn: PeerConnection) -> bool:
        conn.quiet_in = conn.quiet_in + 1 if conn.lines_in == conn.beat_in else 0
        conn.beat_in = conn.lines_in
        return conn.quiet_in >= DEAD_BEATS

    def close_all(self) -> None:
        for conns in self._open.values():
            for conn in list(conns):
                _close(conn)


def _close(conn: PeerConnection) -> None:
    """Close ``conn`` once what was sent on it is written."""
    conn.close()
