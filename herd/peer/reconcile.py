"""Anti-entropy between linked peers, at a cost proportional to the difference
(docs/PEER-PROTOCOL.md, "Reconciliation").

Every stored update goes into the node's update log (a Redis stream, see
``storage/store_batch.lua``). Each node remembers, per peer, how far it
has applied that peer's log (``<prefix>peer:<name>``).

Whenever a link comes up, each side asks the other for its log after the
remembered position: only clients updated since then travel. A position that
cannot be served (first contact, the peer's Redis was replaced, the log was
trimmed) gets a full transfer once, after which the offset is known again.

Live updates carry their log position and the previous one sent on this
link; the receiver advances its offset only along an unbroken chain (inside
the same Lua call that stores the record, or, for ``K``, in the store queue),
so a message lost with a dropped connection shows up as a gap, and a gap
triggers a new SYNC. ``U`` goes out once the sender has stored the update;
``F`` (position later, in a ``K``) when the sender could tell without Redis
that it was newer (herd.latest), so the update travels on while each node's
Redis stores it. A node forwards only while its Redis serves (herd.latest,
RedisStore.serving). An update that came as F may not be held by its sender
yet, so it is logged as ``<peer> F``: SYNC answers to that peer do not leave
it out.

A step over updates that went between the two nodes as F is safe unless this
node failed to store one of them, which it sees happen: from then on it *may
lack* updates of that peer's log (:meth:`Reconciler.may_lack`), takes no step
of it, and pulls; a pull that began after the last such loss clears it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from herd.peer.links import PeerConnection, PeerLinks
from herd.wire import peer as msg
from herd.wire.peer import Position
from storage.store import LogChunk, RedisStore

log = Logger(namespace="herd")

CHUNK = 1000  # log entries (or SCAN count) per Redis call while answering a SYNC


GAP_PULL_INTERVAL = 1.0  # seconds: at most one gap-triggered pull per peer this often
# A pull whose connection brings nothing for this long is given up, and that
# connection closed (a peer answers a SYNC within its Redis timeouts, and a
# dead host is closed by keepalive sooner): the next pull goes on another.
PULL_SILENCE = 60.0
MAX_RETRY_INTERVAL = 30.0  # seconds: the interval doubles after each incomplete pull, up to this


class Reconciler:
    def __init__(self, store: RedisStore, links: PeerLinks, clock: IReactorTime):
        self._clock = clock
        self._store = store
        self._links = links
        self._last_gap_pull: dict[bytes, float] = {}
        self._gap_timers: dict[bytes, Any] = {}
        self._pulling: dict[bytes, PeerConnection] = {}  # peer -> connection our SYNC went on
        self._pull_watch: dict[bytes, Any] = {}  # peer -> timer of its pull's silence check
        self._serving: set[PeerConnection] = set()  # connections whose SYNC is being answered
        self._failed: set[bytes] = set()  # peers whose current pull lost a record
        self._interval: dict[bytes, float] = {}  # per peer, when longer than GAP_PULL_INTERVAL
        self._since: dict[bytes, Position | None] = {}  # per peer, the offset its last pull began at
        # Per peer whose log this node may lack updates of (see may_lack): the
        # serial of the last loss; and per pull, the serial when it began.
        self._losses = 0
        # Per peer to pull from with ALL (its answer leaves out nothing that
        # came from this node), the serial of why: at start, updates this
        # process's predecessor forwarded before storing them may be missing
        # here; once Redis is back, updates of this node's that it lost.
        self._own_missing: dict[bytes, int] = dict.fromkeys(links.neighbours, 0)
        self._redis_back = 0  # the loss serial when Redis last came back (see pull_all)
        self._redis_served = False  # (see pull_all)
        self._lacking: dict[bytes, int] = {}
        self._pull_began: dict[bytes, int] = {}
        self.runs = 0
        self.bytes_sent = 0
        links.on_link_up.append(self.pull)
        links.on_connection_lost.append(self._connection_lost)
        store.on_connected.append(self.pull_all)

    # -- pulling: asking a peer for what we miss ------------------------

    def pull(self, peer: bytes, conn: PeerConnection) -> None:
        """Ask ``peer`` for its log after our offset, unless a pull is under way."""
        if peer in self._pulling:
            return
        self._pulling[peer] = conn
        self._failed.discard(peer)
        self._pull_began[peer] = self._losses
        d = self._store.peer_offset(peer)
        d.addCallback(self._ask, peer, conn)
        d.addErrback(self._pull_failed, peer, conn)

    def _ask(self, since: Position | None, peer: bytes, conn: PeerConnection) -> None:
        if self._pulling.get(peer) is not conn:
            return  # its connection was lost while the offset was read (a pull may be under way on another)
        self._since[peer] = since
        conn.send_line(msg.sync(since, include_own=peer in self._own_missing))
        self._watch_pull(peer, conn, conn.lines_in)

    def _watch_pull(self, peer: bytes, conn: PeerConnection, seen: int) -> None:
        self._cancel_watch(peer)
        self._pull_watch[peer] = self._clock.callLater(PULL_SILENCE, self._pull_silent, peer, conn, seen)

    def _cancel_watch(self, peer: bytes) -> None:
        timer = self._pull_watch.pop(peer, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _pull_silent(self, peer: bytes, conn: PeerConnection, seen: int) -> None:
        if self._pulling.get(peer) is not conn:
            return  # (its timer is cancelled when a pull ends; this is a safeguard)
        self._pull_watch.pop(peer, None)
        if conn.lines_in != seen:
            self._watch_pull(peer, conn, conn.lines_in)
            return
        log.warn("pull from {peer}: nothing came on its connection for {s:g} s; closing it",
                 peer=peer.decode(), s=PULL_SILENCE)
        self._end_pull(peer)
        conn.transport.abortConnection()  # at once: a TLS close would wait for the silent peer's answer

    def _end_pull(self, peer: bytes) -> None:
        del self._pulling[peer]
        self._cancel_watch(peer)

    def pull_all(self) -> None:
        """Redis is (back) up: pull from every linked peer (updates flooded while
        it was away are missing here) and ask each to pull from us (updates our
        Redis stored while their replies were lost never went out). Back, not
        up for the first time: Redis may have lost the last updates it took
        (``everysec``), so this node may lack updates of every peer's log."""
        lost, self._store.log_lost = self._store.log_lost, False
        if self._redis_served:
            self.may_lack(self._links.neighbours)
        if lost:  # emptied, replaced or gone back: its offsets may be past what it holds
            for peer in self._links.neighbours:  # (deleted before the pulls below read them: full transfers)
                self._store.restore_peer_offset(peer, None).addErrback(lambda _: None)
            self._redis_back = self._losses
            self._own_missing.update(dict.fromkeys(self._links.neighbours, self._losses))
            # A pull under way keeps no offset: it began against the Redis
            # that went, and would move this one's offset past what it lost.
            self._failed.update(self._pulling)
        self._redis_served = True
        for peer, conn in self._links.first_connections():
            self.pull(peer, conn)
            conn.send_line(msg.PULL)

    def is_pulling(self, peer: bytes) -> bool:
        return peer in self._pulling

    def may_lack(self, peers: Iterable[bytes]) -> None:
        """Updates that went between each of ``peers`` and this node as F may be
        missing here (one from it, or one this node forwarded to it, was not
        stored; or Redis was away): until a pull that begins after this call
        completes, no U or K of that peer moves the offset (:meth:`lacks`)."""
        for peer in peers:
            self._losses += 1
            self._lacking[peer] = self._losses

    def lacks(self, peer: bytes) -> bool:
        """:meth:`may_lack` was called for ``peer`` since its last complete pull began."""
        return peer in self._lacking

    def gap(self, peer: bytes, conn: PeerConnection) -> None:
        """A live update did not follow on from our offset: pull again, but at
        most once per GAP_PULL_INTERVAL per peer (a burst of gaps is one pull),
        so a struggling Redis is not flooded with SYNC answers."""
        if peer in self._gap_timers:
            return
        interval = self._interval.get(peer, GAP_PULL_INTERVAL)
        wait = self._last_gap_pull.get(peer, -interval) + interval - self._clock.seconds()
        self._gap_timers[peer] = self._clock.callLater(max(wait, 0), self._gap_pull, peer, conn)

    def _gap_pull(self, peer: bytes, conn: PeerConnection) -> None:
        del self._gap_timers[peer]
        self._last_gap_pull[peer] = self._clock.seconds()
        if not conn.connected or self._store.failing:  # pull_all runs once Redis is back
            return
        if peer in self._pulling:
            self.gap(peer, conn)  # after the pull under way, which may not cover the gap
        else:
            self.pull(peer, conn)

    def record_lost(self, peer: bytes, conn: PeerConnection) -> None:
        """A record from ``peer`` could not be stored: the offset must not pass it.
        A pull under way ends incomplete; otherwise pull again (the offset stays
        behind, and with no more updates coming nothing else would move it)."""
        self._failed.add(peer)
        self.may_lack((peer,))
        if peer not in self._pulling:
            self.gap(peer, conn)

    def sync_end(self, peer: bytes, conn: PeerConnection, token: bytes) -> None:
        """The answer to our SYNC is complete (``SYNC-END -``: the peer could not
        finish it). Its records may still wait for Redis in the store's queue:
        the offset write joins that queue behind them, so it lands only if they
        were all stored, and before the live updates the peer chains on it."""
        position = Position.parse(token)
        if self._pulling.get(peer) is not conn:
            return  # not an answer to a pull of ours on this connection
        if position is None or peer in self._failed:
            self._pulled(peer, conn, None)
            return
        d = self._store.set_offset_in_order(peer, position)
        d.addCallbacks(lambda result: self._pulled(peer, conn, position if result.advanced else None),
                       lambda _: self._pulled(peer, conn, None))

    def _pulled(self, peer: bytes, conn: PeerConnection, position: Position | None) -> None:
        """The pull on ``conn`` ended: with the offset at ``position``, or
        incomplete (None)."""
        if self._pulling.get(peer) is not conn:
            return  # that connection was lost meanwhile, and another pull started
        self._end_pull(peer)
        straddled = self._pull_began[peer] < self._redis_back  # Redis came back during this pull
        if position is not None and peer in self._failed and not straddled:
            # A record of the answer failed after this write was sent (an
            # error reply from Redis, which fails only its own batch): the
            # offset must not stay past it. Fall back to where the pull began.
            self._store.restore_peer_offset(peer, self._since.get(peer)).addErrback(lambda _: None)
            position = None
        if straddled:  # not the answer's fault: again at once, a full transfer (its offset, if
            # written meanwhile, is of the Redis that went: deleted first, on the same connection)
            self._store.restore_peer_offset(peer, None).addErrback(lambda _: None)
            if conn.connected:
                self.pull(peer, conn)
            return
        if position is None:
            interval = min(MAX_RETRY_INTERVAL, 2 * self._interval.get(peer, GAP_PULL_INTERVAL))
            self._interval[peer] = interval
            log.warn("pull from {peer} incomplete; offset kept, pulling again in {s:g} s",
                     peer=peer.decode(), s=interval)
            if conn.connected:
                self.gap(peer, conn)
            return
        self._interval.pop(peer, None)
        began = self._pull_began[peer]
        if self._own_missing.get(peer, 0) <= began:
            self._own_missing.pop(peer, None)
        if self._lacking.get(peer, 0) <= began:
            self._lacking.pop(peer, None)
        if peer in self._own_missing or peer in self._lacking:  # a loss since this pull began: again
            self.pull(peer, conn)

    def _pull_failed(self, failure: Any, peer: bytes, conn: PeerConnection) -> None:
        if self._pulling.get(peer) is conn:  # (not a pull that has since moved to another connection)
            self._end_pull(peer)
        # A node that stops closes its Redis connection under the pulls that
        # its closing peer connections started: expected, not an error.
        emit = log.debug if self._store.stopped else log.error
        emit("pull from {peer} failed: {why}", peer=peer.decode(), why=failure.getErrorMessage())

    def _connection_lost(self, peer: bytes, conn: PeerConnection, other: PeerConnection | None) -> None:
        """With the link still up on another connection, pull on it (the pull
        under way on this one, or updates that were in flight to us) and ask
        the peer to pull (updates in flight to it; the peer may not have seen
        this connection go). Otherwise only the next update, arriving with a
        gap, would bring them."""
        self._serving.discard(conn)
        if other is not None:
            other.send_line(msg.PULL)
        if self._pulling.get(peer) is conn:
            self._end_pull(peer)
            if other is not None:
                self.pull(peer, other)
        elif other is not None:
            self.gap(peer, other)

    # -- serving: answering a peer's SYNC -------------------------------

    def serve(self, peer: bytes, conn: PeerConnection, rest: bytes) -> Deferred[Any] | None:
        """Answer ``SYNC <position> [ALL]``: records after the peer's position
        (leaving out updates that came from it, unless ALL), then SYNC-END. One
        answer at a time per connection: a peer pulls once and waits for
        SYNC-END, so another SYNC meanwhile is ignored (each could be a full
        dump queued in memory)."""
        if conn in self._serving:
            log.warn("peer {peer} sent SYNC while its last one is being answered; ignored",
                     peer=peer.decode())
            return None
        self._serving.add(conn)
        since, include_own = msg.parse_sync(rest)
        d = self._serve(peer, conn, since, b"" if include_own else peer)
        return d.addBoth(self._served, conn)

    def _served(self, result: Any, conn: PeerConnection) -> Any:
        self._serving.discard(conn)
        return result

    @inlineCallbacks
    def _serve(self, peer: bytes, conn: PeerConnection, since: Position | None, leave_out: bytes) -> Any:
        """The answer: each record once, however often its client moved in the
        log after ``since`` (a record changed meanwhile goes again), so it costs
        at most one record per client updated since (never more than a full
        transfer, plus what changes while it runs)."""
        started, sent = time.monotonic(), _Answer()
        self._links.start_unchained(peer, conn)
        mode = "incremental"
        try:
            chunk = yield self._store.log_since(since, CHUNK, leave_out)
            while conn.connected and not conn.closing:
                if chunk is None:  # not in this log (another epoch, or trimmed past it, even meanwhile)
                    mode = "full"
                    head = yield self._store.log_head()
                    yield self._send_everything(conn, sent)
                    chunk = yield self._store.log_since(head, CHUNK, leave_out)
                    continue
                self._send_records(conn, chunk.lines, sent)
                if chunk.entries < CHUNK:
                    break
                yield conn.writable()  # a peer that reads slowly is not sent faster
                chunk = yield self._store.log_since(chunk.end, CHUNK, leave_out)
        except Exception as err:  # Redis failed: the peer's offset stays, it asks again
            emit = log.debug if self._store.stopped else log.error  # (see _pull_failed)
            emit("sync to {peer} failed: {why}", peer=peer.decode(), why=str(err))
            if conn.connected:
                conn.send_line(msg.sync_end(None))
            return
        finally:
            conn.end_writable()
        if not conn.connected or conn.closing:
            log.info("sync to {peer}: {mode}, cut short by the connection's end after {records} records",
                     peer=peer.decode(), mode=mode, records=sent.records)
            return
        self._finish(peer, conn, chunk, sent)
        self.runs += 1
        self.bytes_sent += sent.bytes
        log.info("sync to {peer}: {mode}, {records} records, {bytes} bytes in {ms:.1f} ms",
                 peer=peer.decode(), mode=mode, records=sent.records, bytes=sent.bytes,
                 ms=(time.monotonic() - started) * 1000)

    def _finish(self, peer: bytes, conn: PeerConnection, chunk: LogChunk, sent: _Answer) -> None:
        # Runs in the callback of the last log read: updates stored after it
        # are flooded after this, chained on from chunk.end.
        line = msg.sync_end(chunk.end)
        conn.send_line(line)
        sent.bytes += len(line) + 1
        self._links.chain_from(peer, conn, chunk.end)

    @inlineCallbacks
    def _send_everything(self, conn: PeerConnection, sent: _Answer) -> Any:
        cursor = b"0"
        while True:
            cursor, lines = yield self._store.scan_records(cursor, CHUNK)
            if not conn.connected or conn.closing:
                return
            self._send_records(conn, lines, sent)
            if cursor == b"0":
                return
            yield conn.writable()

    @staticmethod
    def _send_records(conn: PeerConnection, lines: list[bytes], sent: _Answer) -> None:
        for at_line in lines:
            if at_line in sent.lines:
                continue
            sent.lines.add(at_line)
            conn.send_line(msg.record(at_line))
            sent.records += 1
            sent.bytes += len(at_line) + 3


class _Answer:
    """One SYNC answer under way: the records it sent (each AT line once) and
    its size."""

    __slots__ = ("lines", "records", "bytes")

    def __init__(self) -> None:
        self.lines: set[bytes] = set()
        self.records = 0
        self.bytes = 0
