"""The node's authenticated peer links: which connections are open to which
peer, and what each update is sent as on each (docs/PEER-PROTOCOL.md,
"Flooding" and "Ordering").

A link to a peer exists while at least one authenticated connection to it is
open, whichever side dialled it. Flooding sends each update once per peer:
on the connection its flood cursor runs on (see herd.peer.reconcile), or
else on its oldest open connection.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Sequence
from typing import Any, Protocol

from twisted.logger import Logger

from herd.wire import peer as msg
from herd.wire.client import AtRecord
from herd.wire.peer import MAX_LISTED, Position, UpdateKey, update_key

log = Logger(namespace="herd")


# Heartbeats (docs/PEER-PROTOCOL.md, "Heartbeats"): beat() runs every
# BEAT_INTERVAL; a connection that sent nothing for QUIET_BEATS beats sends
# HB, and one that received nothing for DEAD_BEATS beats is closed, so a link
# whose packets vanish (a partition, a host gone) is redialled within seconds
# instead of waiting for TCP's retransmissions or its user timeout.
BEAT_INTERVAL = 0.5
QUIET_BEATS = 2  # 1 s without sending: an idle link costs one HB a second each way
DEAD_BEATS = 6  # 3 s without receiving (three heartbeats missed)


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


class FloodCursor:
    """How far this node's log has been flooded to one peer, on one connection.
    ``sent``: the last log position sent to it (None while a SYNC answer is
    under way: updates then go unchained). ``covered``: the last position such
    that every log entry up to it was sent to the peer, came from it, or was
    forwarded to it (``F``) before being stored. ``forwarded``: the update key
    of each entry since ``sent`` that was forwarded to it;
    ``awaiting_confirmation``: the keys of each entry since ``sent`` that came
    from it as ``F`` and that none of its own K lines has listed yet (listing an
    update there means it stored it). The peer may move its offset past them
    only if it holds them, so K lists both. ``mark``: where a full forwarded
    list's K will go up to (see PeerLinks._forwarded_full)."""

    __slots__ = ("conn", "sent", "covered", "forwarded", "awaiting_confirmation", "mark")

    def __init__(self, conn: PeerConnection, sent: Position | None, covered: Position | None):
        self.conn = conn
        self.sent = sent
        self.covered = covered
        self.forwarded: list[UpdateKey] = []
        self.awaiting_confirmation: dict[UpdateKey, None] = {}
        self.mark: tuple[Position, int] | None = None  # (position, len(forwarded) then)

    @property
    def forwarded_step_full(self) -> bool:
        """MAX_LISTED updates forwarded to the peer were stored since the mark
        (or since ``sent``, with no mark): see PeerLinks._forwarded_full."""
        return len(self.forwarded) >= (self.mark[1] if self.mark else 0) + MAX_LISTED


Stored = tuple[AtRecord, Position, Position | None]  # a record, its log position, the one before it
LinkCallback = Callable[[bytes, PeerConnection], None]
LossCallback = Callable[[bytes, PeerConnection, PeerConnection | None], None]


class PeerLinks:
    """Registry of open authenticated peer connections, by peer name, and the
    flood cursor of each peer (see herd.peer.reconcile)."""

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
            for conn in self._open[name]:
                _close(conn)
            if not self._open[name]:
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
        conns = self._open[name]
        if conn not in conns:
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
                cursor.conn.send_lines(forwards)
                sent.append(name)
        self.flooded += len(sent) * len(at_lines)
        return frozenset(sent)

    def flood(self, record: AtRecord, position: Position, previous: Position | None,
              source: bytes | None = None, forwarded: frozenset[bytes] = frozenset(),
              source_has_it: bool = True, key: UpdateKey | None = None) -> int:
        """Send an update stored at ``position`` in our log (right after
        ``previous`` there) to every linked peer except ``source`` and except
        those it was forwarded to.

        Where a flood cursor runs (see herd.peer.reconcile) the update goes on
        its connection as ``U <last sent> <position>``, which lets the peer
        advance its offset, but only if every log entry since the last one sent
        is known to have reached it, to have come from it, or to be held there
        (a ``K`` listing the forwarded entries goes first). If ``previous``
        shows an entry we never saw stored (its Redis reply was lost), the
        cursor breaks: the peer is sent ``PULL`` and fetches the gap with a
        SYNC. Elsewhere the update goes unchained on the oldest connection.
        Unless ``source_has_it``, the update came from ``source`` as ``F``: the
        ``K`` that moves its offset past it lists it too, unless ``source``
        has listed it in a K of its own first (see :meth:`confirmed_by`).
        ``key``: the update's update_key, when the caller has made it."""
        sent = 0
        for name, conns in self._open.items():
            if conns:
                sent += self._flood_to(name, conns, record, position, previous, source, forwarded,
                                       source_has_it, key)
        self.flooded += sent
        return sent

    def flood_group(self, stored: Sequence[Stored], keys: list[UpdateKey] | None, source: bytes | None,
                    forwarded: frozenset[bytes], source_has_it: bool) -> int:
        """:meth:`flood` of each of ``stored`` in order, all with these
        ``source``, ``forwarded`` and ``source_has_it``. They were stored
        together, in one batch: each one's previous is the one before it.
        ``keys``: their update keys, given when they came from ``source`` as
        ``F`` or were forwarded. Where a peer's flood cursor only takes note of
        them (they came from it, or were forwarded to it), it does so for the
        whole group at once, in steps of at most MAX_LISTED updates."""
        sent = 0
        first_previous, last = stored[0][2], stored[-1][1]
        for name, conns in self._open.items():
            if not conns:
                continue
            cursor = self._cursor.get(name)
            if cursor is None or cursor.sent is None or cursor.covered != first_previous:
                pass  # not live, or a broken chain: one by one
            elif name == source:
                if not source_has_it:
                    cursor.awaiting_confirmation.update(dict.fromkeys(keys))  # type: ignore[arg-type]
                cursor.covered = last
                continue
            elif name in forwarded:
                self._note_forwarded(cursor, stored, keys)  # type: ignore[arg-type]
                continue
            for record, position, previous in stored:
                sent += self._flood_to(name, conns, record, position, previous, source, forwarded,
                                       source_has_it, None)
        self.flooded += sent
        return sent

    def _note_forwarded(self, cursor: FloodCursor, stored: Sequence[Stored], keys: list[UpdateKey]) -> None:
        """The updates forwarded to the cursor's peer were stored: into its forwarded list."""
        for first in range(0, len(stored), MAX_LISTED):
            cursor.forwarded.extend(keys[first:first + MAX_LISTED])
            cursor.covered = stored[min(first + MAX_LISTED, len(stored)) - 1][1]
            if cursor.forwarded_step_full:
                self._forwarded_full(cursor, cursor.covered)

    def _flood_to(self, name: bytes, conns: list[PeerConnection], record: AtRecord, position: Position,
                  previous: Position | None, source: bytes | None, forwarded: frozenset[bytes],
                  source_has_it: bool, key: UpdateKey | None) -> int:
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
        if live is not None and name == source and not source_has_it:
            live.awaiting_confirmation[key or update_key(record)] = None
            return 0
        if live is not None and name in forwarded:
            live.forwarded.append(key or update_key(record))
            if live.forwarded_step_full:
                self._forwarded_full(live, position)
            return 0
        if name == source:
            return 0
        if live is not None:
            if live.forwarded or live.awaiting_confirmation:
                self._send_log_moved(live, previous)  # type: ignore[arg-type]
            live.conn.send_line(msg.update(live.sent, position, record.line))
            live.sent = position
        else:
            conn = cursor.conn if cursor is not None else conns[0]
            conn.send_line(msg.update(None, position, record.line))
        return 1

    def send_log_moved(self) -> int:
        """Tell each peer with a running cursor how far our log moved with
        updates that came from it or were forwarded to it (``K``), so its offset
        keeps up and a later SYNC does not walk over them. Called several
        times a second."""
        sent = 0
        for cursor in self._cursor.values():
            if cursor.sent is not None and cursor.covered != cursor.sent:
                if cursor.mark is not None:  # the freshest updates wait for the next tick
                    self._send_to_mark(cursor, cursor.mark)
                else:
                    self._send_log_moved(cursor, cursor.covered)  # type: ignore[arg-type]
                sent += 1
        return sent

    @staticmethod
    def _send_log_moved(cursor: FloodCursor, to: Position) -> None:
        """A K up to ``to`` listing both lists, which it empties."""
        _send_k(cursor, to, (*cursor.forwarded, *cursor.awaiting_confirmation))
        cursor.forwarded = []
        cursor.awaiting_confirmation = {}
        cursor.mark = None

    def _forwarded_full(self, cursor: FloodCursor, position: Position) -> None:
        """MAX_LISTED more updates forwarded to the cursor's peer were stored
        here, the last at ``position``. The K goes one such step behind: up to
        the mark set MAX_LISTED updates ago, listing the forwarded updates up to
        there; then a new mark. By the time it arrives the peer has most likely
        stored them too, so it knows them held without asking its Redis, and
        its own K lines no longer list them back (confirmed_by). A mark is set
        only while no update from the peer awaits confirmation (a K up to it
        lists no such update); otherwise the K goes up to ``position`` with
        both lists."""
        if cursor.mark is not None:
            self._send_to_mark(cursor, cursor.mark)
        if cursor.awaiting_confirmation:
            self._send_log_moved(cursor, position)
        else:
            cursor.mark = (position, len(cursor.forwarded))

    @staticmethod
    def _send_to_mark(cursor: FloodCursor, mark: tuple[Position, int]) -> None:
        """A K up to the mark, listing the forwarded updates up to it (no update
        from the peer awaited confirmation when it was set)."""
        to, listed = mark
        _send_k(cursor, to, cursor.forwarded[:listed])
        del cursor.forwarded[:listed]
        cursor.mark = None

    def confirmed_by(self, name: bytes, listed: list[UpdateKey]) -> None:
        """``name``'s K line listed these updates: it has stored them, so our K
        lines need not ask it about them."""
        cursor = self._cursor.get(name)
        if cursor is not None and cursor.awaiting_confirmation:
            awaiting = cursor.awaiting_confirmation
            for key in listed:
                awaiting.pop(key, None)

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
    conn.flush_lines()
    conn.transport.loseConnection()


def _send_k(cursor: FloodCursor, to: Position, keys: Iterable[UpdateKey]) -> None:
    """``K <sent> <to>`` listing ``keys`` (four fields each) on the cursor's
    connection; ``sent`` := ``to``."""
    listed = [field for key in keys for field in key]
    cursor.conn.send_line(msg.log_moved(cursor.sent, to, listed))  # type: ignore[arg-type]
    cursor.sent = to
