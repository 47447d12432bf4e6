"""What a node does with requests and peer updates, with no knowledge of
sockets: the domain logic between connections, storage and places.

Contracts:
- ``handle`` always fires with reply bytes (never fails): an AT line once the
  update is in Redis, a WHATSAT body, or ``? <line>`` when it cannot serve.
- An update that is strictly newer than the held record is flooded to every
  linked peer except the one it came from; anything else goes nowhere. When
  that is known without Redis (herd.latest) it goes at once, in parallel with
  storing it; a client's reply still waits for its own Redis.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from herd.latest import LatestTimes
from herd.logs import Throttle, loggable
from herd.peer.links import PeerConnection, PeerLinks, Stored
from herd.peer.reconcile import Reconciler
from herd.places.provider import PlacesError, PlacesProvider
from herd.stats import Stats
from herd.wire import peer as msg
from herd.wire.client import (
    AtRecord,
    Iamat,
    Request,
    Whatsat,
    format_whatsat_reply,
    make_record,
    parse_at_line,
    parse_client_time,
    refusal,
)
from herd.wire.peer import LogStep, Position
from storage.batch import OnDemand, StoredRun, StoreResult
from storage.store import RedisStore, refused_unrun

log = Logger(namespace="herd")


MAX_UNSTORED = 100_000  # forwarded updates kept for storing again when Redis is back
STORE_AGAIN_AFTER = 1.0  # seconds after a failed store of a forwarded update before trying again
SCAN_COUNT = 1000  # clients per Redis call while loading their times
# Records waiting for this node's Redis at which it stops reading from its
# peers, and below which it reads again: a burst (a large SYNC answer) waits
# in the peers' send buffers (about 100 bytes a record) instead of this
# node's memory (about 2 KB a record, parsed and queued).
BACKLOG_HIGH = 20_000
BACKLOG_LOW = 5_000
# A peer's record is refused when its client-time is further ahead of this
# node's clock than the IAMAT bound plus this much (hosts' clocks differ a
# little; a time years ahead would pin that client herd-wide for good).
PEER_CLOCK_SLACK_NS = 300 * 1_000_000_000
# ... and when it is at most this much further ahead, this node's clock may be
# the one behind: the record counts as lost (the peer's offset stays, pulls
# retry with back-off) until the clock has caught up and it is stored.
PEER_CLOCK_RETRY_NS = 86_400 * 1_000_000_000


_FORWARD = msg.FORWARD + b" "  # an F line's start: told, and cut, without splitting the line
_FORWARD_LEN = len(_FORWARD)


class Origin(NamedTuple):
    peer: bytes | None  # the peer an update came from; None: a client
    unconfirmed: bool  # it came as F: that peer may not hold it yet


CLIENT = Origin(None, False)
# Per record of a group: the peers it was forwarded to before being stored
# (the fast path of Node._accept), or None (the slow path).
Forwarded = list[frozenset[bytes] | None]


class _StoredWhole(OnDemand[Stored]):
    """(record, position, previous) of each record of a group stored whole (a
    StoredRun), made on demand: PeerLinks.flood_group reads the ends, and the
    others only where it sends U lines."""

    __slots__ = ("_records", "_run")

    def __init__(self, records: list[AtRecord], run: StoredRun):
        super().__init__(len(records))
        self._records, self._run = records, run

    def _item(self, index: int) -> Stored:
        return self._records[index], self._run.position(index), self._run.previous_of(index)


def _all_forwarded_alike(forwarded: Forwarded) -> bool:
    """Every record of a (non-empty) group was forwarded, to the same peers."""
    first = forwarded[0]
    return first is not None and forwarded.count(first) == len(forwarded)


class Node:
    def __init__(self, name: bytes, store: RedisStore, places: PlacesProvider, links: PeerLinks,
                 clock: IReactorTime, stats: Stats | None = None, max_future_ns: int | None = None,
                 clock_ns: Callable[[], int] = time.time_ns):
        self.name = name
        self.clock = clock  # (connections schedule their writes on it too)
        self._peer_time_limit = None if max_future_ns is None else max_future_ns + PEER_CLOCK_SLACK_NS
        self._clock_ns = clock_ns
        self._refusals = Throttle(clock, log.error,
                                  "cannot serve {n} more request(s) in the last {window} (the last: {last})")
        self._losses = Throttle(clock, log.error,  # peers' updates Redis did not take
                                "{n} more update(s) from peers not stored in the last {window} "
                                "(the last: {last})")
        # Reading client times at start fails every second or so while Redis is away: one line a minute.
        self._load_failures = Throttle(
            clock, log.warn, "reading client times failed {n} more time(s) in the last {window} "
            "(the last: {last})", limit=1, window=60.0, max_window=60.0)
        self.stats = stats or Stats()
        self.store = store
        self.places = places
        self.links = links
        self.latest = LatestTimes()
        self.reconciler = Reconciler(store, links, clock)
        # Updates forwarded before storing whose store then failed: stored
        # again once Redis is back (peers hold them; this node must too).
        self._unstored: deque[tuple[AtRecord, Origin, frozenset[bytes]]] = deque(maxlen=MAX_UNSTORED)
        self._retry: Any = None
        store.on_connected.append(self._store_again)
        self._peer_handlers: dict[bytes, Callable[[bytes, bytes, PeerConnection], Any]] = {
            msg.FORWARD: self.handle_forward, msg.UPDATE: self.handle_update,
            msg.LOG_MOVED: self.handle_log_moved, msg.RECORD: self.handle_record,
            msg.SYNC: self.handle_sync, msg.SYNC_END: self.handle_sync_end, msg.PULL: self.handle_pull,
            msg.HEARTBEAT: self.handle_heartbeat,
        }
        self._paused_peers: list[PeerConnection] = []  # not read from until the backlog drains

    @inlineCallbacks
    def load_latest(self) -> Any:
        """Read every client's time from Redis into ``self.latest`` (in the
        background at start; until it is done, updates take the slow path).
        Retries until it succeeds; a SCAN cursor is only good on the connection
        (and Redis) that gave it, so any failure or reconnection starts over."""
        cursor, connection = b"0", self.store.connections_made
        while True:
            try:
                cursor, held = yield self.store.scan_times(cursor, SCAN_COUNT)
            except Exception as err:
                if self.store.stopped:
                    return
                if self._load_failures.allow(str(err)):
                    log.warn("reading client times failed ({why}); retrying every second", why=str(err))
                yield deferLater(self.clock, 1.0, lambda: None)
                cursor, connection = b"0", self.store.connections_made
                continue
            if connection != self.store.connections_made:
                cursor, connection = b"0", self.store.connections_made
                continue
            self.latest.merge((client_id, t.ns) for client_id, t in
                              ((client_id, parse_client_time(text)) for client_id, text in held)
                              if t is not None)
            if cursor == b"0":
                self._load_failures.close()
                self.latest.loaded()
                log.info("{n} client times loaded: newer updates are forwarded on arrival",
                         n=len(self.latest))
                return

    # -- client requests ------------------------------------------------

    def handle(self, request: Request, received_ns: int) -> Deferred[bytes]:
        """Answer one valid client request (see module contract)."""
        if isinstance(request, Iamat):
            return self.iamats([request], received_ns)
        return self.whatsat(request).addCallback(self._count, "WHATSAT")

    def _count(self, reply: bytes, command: str) -> bytes:
        self.stats.request(command, "refused" if reply.startswith(b"? ") else "ok")
        return reply

    def iamats(self, requests: list[Iamat], received_ns: int) -> Deferred[bytes]:
        """The replies to IAMATs received together (at ``received_ns``), in
        order, concatenated: each its AT line once stored, or ``? <line>``
        (counted either way). They are stored as one group, in order; each is
        flooded as :meth:`_accept` says. One Deferred and one callback pair for
        the group: this path runs for every update."""
        records = [make_record(self.name, received_ns, request) for request in requests]
        lines = [record.line for record in records]
        forwarded, d = self._forward_and_store(records, None, b"")
        return d.addCallbacks(self._clients_stored, self._clients_lost,
                              callbackArgs=(records, forwarded, lines),
                              errbackArgs=(records, forwarded, requests))

    def _forward_and_store(self, records: list[AtRecord], source: bytes | None,
                           logged: bytes) -> tuple[Forwarded, Deferred[Sequence[StoreResult]]]:
        """Forward the group (:meth:`_forward_group`), then store it, logged
        with source ``logged`` (store_group); those forwarded are known newer."""
        forwarded = self._forward_group(records, source)
        known_newer = [sent is not None for sent in forwarded]
        return forwarded, self.store.store_group(records, source=logged, known_newer=known_newer)

    def _forward_group(self, records: list[AtRecord], source: bytes | None) -> Forwarded:
        """The fast path of :meth:`_accept` for a group: the records herd.latest
        knows to be newer are forwarded at once (all of them in one call per
        peer); the others are left to Redis (None)."""
        serving, claim = self.store.serving, self.latest.claim
        fast = [claim(record.client_id, record.time.ns, fast_ok=serving) for record in records]
        if not any(fast):
            return [None] * len(records)
        ahead = [record.line for record, ok in zip(records, fast, strict=True) if ok]
        sent = self.links.forward(ahead, source)
        return [sent if ok else None for ok in fast]

    def _clients_stored(self, results: Sequence[StoreResult], records: list[AtRecord],
                        forwarded: Forwarded, lines: list[bytes]) -> bytes:
        self._group_stored(results, records, forwarded, CLIENT)
        self.stats.request("IAMAT", "ok", len(lines))
        lines.append(b"")
        return b"\n".join(lines)

    def _group_stored(self, results: Sequence[StoreResult], records: list[AtRecord], forwarded: Forwarded,
                      origin: Origin, settle: bool = True) -> None:
        """Records from ``origin`` were stored (or found not newer): each newer
        one is flooded (PeerLinks.flood_group), in runs forwarded alike.
        ``settle``: each record of the slow path (forwarded None) is settled in
        herd.latest. Every record forwarded in a group went to the same peers."""
        if type(results) is StoredRun and _all_forwarded_alike(forwarded):
            # The usual case: all stored, all forwarded alike; no object per record.
            self._count_stored(origin, len(records), len(records))
            self.links.flood_group(_StoredWhole(records, results), origin.peer, forwarded[0] or frozenset())
            return
        stored: list[Stored] = []
        sent_to: list[frozenset[bytes] | None] = []
        for result, record, sent in zip(results, records, forwarded, strict=True):
            if sent is None and settle:  # the slow path (see _accept)
                self.latest.settle(record.client_id, record.time.ns, result.stored)
            if result.stored and result.position is not None:
                stored.append((record, result.position, result.previous))
                sent_to.append(sent)
        self._count_stored(origin, len(records), len(stored))
        if not stored:
            return
        sent = sent_to[0]
        if sent_to.count(sent) < len(sent_to):  # some forwarded, some not: one by one
            for one_stored, one in zip(stored, sent_to, strict=True):
                self.links.flood_group([one_stored], origin.peer, one or frozenset())
            return
        self.links.flood_group(stored, origin.peer, sent or frozenset())

    def _count_stored(self, origin: Origin, received: int, stored: int) -> None:
        if origin.peer is not None:
            self.stats.flood_duplicate += received - stored
            self.stats.flood_in += stored
        if stored:
            self.stats.stored()

    def _group_lost(self, failure: Failure, records: list[AtRecord],
                    forwarded: Forwarded, origin: Origin) -> None:
        """A group of records was not stored: each is settled, or kept to be stored again."""
        # A write Redis refused before running it holds nothing (the table must
        # not keep ids made up while Redis is full); any other outcome is unknown.
        may_hold = not refused_unrun(failure)
        for record, sent in zip(records, forwarded, strict=True):
            if sent is None:
                self.latest.settle(record.client_id, record.time.ns, may_hold)
            else:
                self._forwarded_lost(failure, record, origin, sent)

    def _forwards_lost(self, failure: Failure, records: list[AtRecord], forwarded: Forwarded,
                       origin: Origin, conn: PeerConnection) -> None:
        self._group_lost(failure, records, forwarded, origin)
        for record in records:
            self._update_lost(failure, record, origin.peer, conn)  # type: ignore[arg-type]

    def _clients_lost(self, failure: Failure, records: list[AtRecord],
                      forwarded: Forwarded, requests: list[Iamat]) -> bytes:
        self._group_lost(failure, records, forwarded, CLIENT)
        self.stats.request("IAMAT", "refused", len(requests))
        return b"".join([self._cannot_serve(failure, request.line) for request in requests])

    def whatsat(self, request: Whatsat) -> Deferred[bytes]:
        d: Deferred[Any] = self.store.get(request.client_id)
        d.addCallback(self._places_for, request)
        return d.addErrback(self._cannot_serve, request.line)

    def _places_for(self, record: AtRecord | None, request: Whatsat) -> Deferred[bytes]:
        if record is None:
            return succeed(refusal(request.line))
        loc = record.location
        self.stats.places_calls += 1
        d = self.places.nearby(loc.lat.decode(), loc.lon.decode(), request.radius_m, request.limit)
        return d.addCallback(lambda answer: format_whatsat_reply(record.line, answer, request.limit))

    def _cannot_serve(self, failure: Failure, line: bytes) -> bytes:
        if failure.check(PlacesError):
            self.stats.places_failures += 1
        why = failure.getErrorMessage() or repr(failure.value)
        if self._refusals.allow(why):
            log.error("cannot serve {line}: {why}", line=loggable(line), why=why)
        return refusal(line)

    def close_logs(self) -> None:
        """Sum up what the throttled logs left out so far (the node stops)."""
        for throttle in (self._refusals, self._losses, self._load_failures):
            throttle.close()

    # -- storing and flooding -------------------------------------------

    def _accept(self, record: AtRecord, peer: bytes, step: LogStep | None = None) -> Deferred[StoreResult]:
        """Store ``record`` from ``peer`` (a U or R line) and flood it if newer.
        While Redis serves and herd.latest can tell it is newer, it is
        forwarded at once (``F``) and only its log position follows the store
        (in ``K`` lines); otherwise it is flooded once Redis has said it was
        newer. (The groups of :meth:`iamats` and :meth:`handle_forwards` do the
        same for each of their records.) Fires with the StoreResult, or fails
        when Redis did not take it."""
        origin = Origin(peer, False)
        if self.latest.claim(record.client_id, record.time.ns, fast_ok=self.store.serving):
            forwarded = self.links.forward([record.line], peer)
            d = self._store(record, origin, step, known_newer=True)
            d.addCallbacks(self._stored, self._forwarded_lost, callbackArgs=(record, origin, forwarded),
                           errbackArgs=(record, origin, forwarded))
            return d
        d = self._store(record, origin, step)
        d.addBoth(self._settled, record)
        return d.addCallback(self._stored, record, origin, None)

    def _store(self, record: AtRecord, origin: Origin, step: LogStep | None,
               tie_break: bool = False, known_newer: bool = False) -> Deferred[StoreResult]:
        if origin.peer is None and not tie_break:
            return self.store.store_if_newer(record, known_newer=known_newer)
        # The log names the peer an update came from, so that a SYNC answer to
        # it leaves the update out; but not when it came as F (see herd.peer.reconcile).
        logged = (origin.peer or b"") + (b" F" if origin.unconfirmed else b"")
        return self.store.store_if_newer(record, tie_break=True, step=step, source=logged,
                                         known_newer=known_newer)

    def _settled(self, outcome: Any, record: AtRecord) -> Any:
        may_hold = outcome.stored if isinstance(outcome, StoreResult) else not refused_unrun(outcome)
        self.latest.settle(record.client_id, record.time.ns, may_hold)
        return outcome

    def _stored(self, result: StoreResult, record: AtRecord, origin: Origin,
                forwarded: frozenset[bytes] | None) -> StoreResult:
        """_group_stored for one record (herd.latest settled by the caller)."""
        self._group_stored([result], [record], [forwarded], origin, settle=False)
        return result

    def _forwarded_lost(self, failure: Failure, record: AtRecord, origin: Origin,
                        forwarded: frozenset[bytes]) -> Failure:
        """A record forwarded before it was stored was not: it is stored again,
        since peers hold it, unless it is a client's that went to no peer (its
        '? <line>' stands; herd.latest keeps its time, which only sends later
        updates of that client the slow way)."""
        if not forwarded and origin.peer is None:
            return failure
        self.reconciler.may_lack(forwarded)  # they hold it, and their K lines will step over it
        if len(self._unstored) == self._unstored.maxlen:
            log.error("too many forwarded updates not stored; dropping {line}",
                      line=loggable(self._unstored[0][0].line))
        self._unstored.append((record, origin, forwarded))
        if self._retry is None or not self._retry.active():
            self._retry = self.clock.callLater(STORE_AGAIN_AFTER, self._store_again)
        return failure

    def _store_again(self) -> None:
        """Store the updates that went to peers but not into Redis (when Redis
        is back, and a while after each failure). They are peers' records by
        now: equal client times are settled as between peers."""
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if not self.store.serving:  # on_connected calls again once it serves after a failure;
            if self._unstored:  # a stall with no failure has no such call: try again later
                self._retry = self.clock.callLater(STORE_AGAIN_AFTER, self._store_again)
            return
        pending, self._unstored = self._unstored, deque(maxlen=MAX_UNSTORED)
        if pending:
            log.info("storing {n} forwarded update(s) again", n=len(pending))
        for record, origin, forwarded in pending:
            d = self._store(record, origin, None, tie_break=True)
            d.addCallbacks(self._stored, self._forwarded_lost, callbackArgs=(record, origin, forwarded),
                           errbackArgs=(record, origin, forwarded))
            d.addErrback(lambda _: None)

    # -- peer messages ----------------------------------------------------

    def handle_peer_lines(self, lines: list[bytes], peer: bytes, conn: PeerConnection) -> None:
        """The lines of one read from an authenticated peer, in order: each
        dispatched to ``handle_<kind>`` (docs/PEER-PROTOCOL.md, "Messages"),
        except that consecutive F lines are stored as one group."""
        forwards: list[bytes] = []
        for line in lines:
            if line.startswith(_FORWARD):
                forwards.append(line[_FORWARD_LEN:])
                continue
            if forwards:
                self.handle_forwards(forwards, peer, conn)
                forwards = []
            kind, rest = msg.split_kind(line)
            handler = self._peer_handlers.get(kind)
            if handler is None:
                self._malformed(peer, "an unexpected line", line)
            else:
                handler(rest, peer, conn)
        if forwards:
            self.handle_forwards(forwards, peer, conn)

    def handle_forward(self, at_line: bytes, peer: bytes, conn: PeerConnection) -> None:
        self.handle_forwards([at_line], peer, conn)

    def handle_forwards(self, at_lines: list[bytes], peer: bytes, conn: PeerConnection) -> None:
        """Updates ``peer`` forwarded before storing them (F), stored here as one
        group, each flooded on as :meth:`_accept` says (as :meth:`_apply`)."""
        records = self._peer_records(at_lines, peer, conn)
        if not records:
            return
        origin = Origin(peer, True)
        forwarded, d = self._forward_and_store(records, peer, peer + b" F")
        d.addCallbacks(self._group_stored, self._forwards_lost, callbackArgs=(records, forwarded, origin),
                       errbackArgs=(records, forwarded, origin, conn))
        if self.store.backlog >= BACKLOG_HIGH:
            self._pause_peer(conn)

    def handle_record(self, at_line: bytes, peer: bytes, conn: PeerConnection) -> None:
        self._apply(at_line, peer, None, conn)

    def handle_update(self, rest: bytes, peer: bytes, conn: PeerConnection) -> None:
        prev_token, pos_token, at_line = msg.parse_update(rest)
        self._apply(at_line, peer, self._log_step(peer, conn, prev_token, pos_token), conn)

    def handle_log_moved(self, rest: bytes, peer: bytes, conn: PeerConnection) -> None:
        moved = msg.parse_log_moved(rest)
        if moved is None:
            self._malformed(peer, "a malformed K (log moved)", rest)
            return
        if self.reconciler.lacks(peer):
            self.reconciler.gap(peer, conn)
            return
        d = self.store.advance_offset(LogStep(peer, moved.prev, moved.pos))
        d.addCallback(lambda result: None if result.advanced else self.reconciler.gap(peer, conn))
        d.addErrback(lambda f: self.reconciler.record_lost(peer, conn))

    def handle_sync(self, rest: bytes, peer: bytes, conn: PeerConnection) -> None:
        self.reconciler.serve(peer, conn, rest)

    def handle_sync_end(self, rest: bytes, peer: bytes, conn: PeerConnection) -> None:
        self.reconciler.sync_end(peer, conn, rest.strip())

    def handle_pull(self, rest: bytes, peer: bytes, conn: PeerConnection) -> None:
        self.reconciler.pull(peer, conn)

    def handle_heartbeat(self, rest: bytes, peer: bytes, conn: PeerConnection) -> None:
        """Nothing to do: arriving was its message (PeerLinks.beat)."""

    @property
    def paused_peers(self) -> list[PeerConnection]:
        """Peer connections not read from until Redis catches up (silent by our choice)."""
        return self._paused_peers

    @staticmethod
    def _malformed(peer: bytes, what: str, line: bytes) -> None:
        log.warn("peer {peer} sent {what}: {line}", peer=peer.decode(), what=what,
                 line=loggable(line[:200]))

    def _log_step(self, peer: bytes, conn: PeerConnection, prev_token: bytes,
                  pos_token: bytes) -> LogStep | None:
        """The step ``prev -> pos`` of ``peer``'s log, or None when unchained
        (sent during a SYNC answer, which covers it, or on a link with no flood
        cursor yet, which needs a pull) or when this node may lack updates of
        that log (it pulls)."""
        prev, pos = Position.parse(prev_token), Position.parse(pos_token)
        if prev is None or pos is None or prev.epoch != pos.epoch:
            if not self.reconciler.is_pulling(peer):
                self.reconciler.gap(peer, conn)
            return None
        if self.reconciler.lacks(peer):
            self.reconciler.gap(peer, conn)
            return None
        return LogStep(peer, prev, pos)

    def _peer_records(self, at_lines: list[bytes], peer: bytes, conn: PeerConnection) -> list[AtRecord]:
        """:meth:`_peer_record` of each line, those that are not None: usually
        all of them, told with one look at the clock."""
        parsed = [parse_at_line(at_line) for at_line in at_lines]
        if all(parsed):
            records = cast(list[AtRecord], parsed)
            limit = self._peer_time_limit
            if limit is None or max([record.time.ns for record in records]) <= self._clock_ns() + limit:
                return records
        return [record for record in (self._peer_record(at_line, peer, conn) for at_line in at_lines)
                if record is not None]

    def _peer_record(self, at_line: bytes, peer: bytes, conn: PeerConnection) -> AtRecord | None:
        """The record of an AT line from ``peer``, or None (logged) when it is
        malformed or its client-time too far ahead of this node's clock."""
        record = parse_at_line(at_line)
        if record is None:
            self._malformed(peer, "a malformed record", at_line)
            return None
        if self._peer_time_limit is not None:
            ahead = record.time.ns - self._clock_ns() - self._peer_time_limit
            if ahead > 0:
                self._malformed(peer, "a record whose client-time is too far ahead of this node's clock",
                                at_line)
                if ahead <= PEER_CLOCK_RETRY_NS:
                    self.reconciler.record_lost(peer, conn)
                return None
        return record

    def _apply(self, at_line: bytes, peer: bytes, step: LogStep | None, conn: PeerConnection) -> None:
        """Store a record from ``peer``; flood it on if newer; with a log step whose
        offset did not advance, pull the gap."""
        record = self._peer_record(at_line, peer, conn)
        if record is None:
            return
        d = self._accept(record, peer, step)
        d.addCallbacks(self._peer_stored, self._update_lost,
                       callbackArgs=(peer, conn, step is not None), errbackArgs=(record, peer, conn))
        if self.store.backlog >= BACKLOG_HIGH:
            self._pause_peer(conn)

    def _pause_peer(self, conn: PeerConnection) -> None:
        """Stop reading from ``conn`` until the store's backlog is below BACKLOG_LOW."""
        if conn in self._paused_peers or not conn.connected:
            return
        if not self._paused_peers:
            log.info("{n} updates wait for Redis: reading from peers paused until fewer than {low}",
                     n=self.store.backlog, low=BACKLOG_LOW)
            self.store.when_backlog_below(BACKLOG_LOW).addCallback(self._resume_peers)
        self._paused_peers.append(conn)
        conn.transport.pauseProducing()  # type: ignore[attr-defined]

    def _resume_peers(self, _: object) -> None:
        paused, self._paused_peers = self._paused_peers, []
        log.info("reading from peers again ({n} updates wait for Redis)", n=self.store.backlog)
        for conn in paused:
            if conn.connected:
                conn.transport.resumeProducing()  # type: ignore[attr-defined]

    def _peer_stored(self, result: StoreResult, peer: bytes, conn: PeerConnection, chained: bool) -> None:
        if chained and not result.advanced:
            self.reconciler.gap(peer, conn)

    def _update_lost(self, failure: Failure, record: AtRecord, peer: bytes, conn: PeerConnection) -> None:
        why = failure.getErrorMessage()
        if self.store.stopped:  # stopping: peers keep it, and pull it again from our offset
            log.debug("update from {peer} not stored ({why}): {line}", peer=peer.decode(), why=why,
                      line=loggable(record.line))
        elif self._losses.allow(why):
            log.error("update from {peer} not stored ({why}): {line}", peer=peer.decode(), why=why,
                      line=loggable(record.line))
        self.reconciler.record_lost(peer, conn)  # the offset stays behind; a pull repairs it

