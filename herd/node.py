"""What a node does with requests and peer updates, with no knowledge of
sockets: the domain logic between connections, storage and places.

Contracts:
- ``handle`` always fires with reply bytes (never fails): an AT line once the
  update is in Redis, a WHATSAT body, or ``? <line>`` when it cannot serve.
- An update that is strictly newer than the held record is flooded to every
  linked peer except the one it came from; anything else goes nowhere.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from herd.peers import PULL, PeerConnection, PeerLinks
from herd.places import PlacesError, PlacesProvider
from herd.protocol import (
    AtRecord,
    Iamat,
    Request,
    Whatsat,
    format_whatsat_reply,
    make_record,
    parse_at_line,
)
from herd.reconcile import RECORD, SKIP, SYNC, SYNC_END, UPDATE, Reconciler
from herd.stats import Stats
from storage.store import Chain, Position, RedisStore, StoreResult

log = Logger(namespace="herd")


def refusal(line: bytes) -> bytes:
    return b"? " + line + b"\n"


class Node:
    def __init__(self, name: bytes, store: RedisStore, places: PlacesProvider, links: PeerLinks,
                 clock: IReactorTime, stats: Stats | None = None):
        self.name = name
        self.stats = stats or Stats()
        self.store = store
        self.places = places
        self.links = links
        self.reconciler = Reconciler(store, links, clock)

    # -- client requests ------------------------------------------------

    def handle(self, request: Request, received_ns: int) -> Deferred[bytes]:
        """Answer one valid client request (see module contract)."""
        command = "IAMAT" if isinstance(request, Iamat) else "WHATSAT"
        d = self.iamat(request, received_ns) if isinstance(request, Iamat) else self.whatsat(request)
        return d.addCallback(self._count, command)

    def _count(self, reply: bytes, command: str) -> bytes:
        self.stats.request(command, "refused" if reply.startswith(b"? ") else "ok")
        return reply

    def iamat(self, request: Iamat, received_ns: int) -> Deferred[bytes]:
        record = make_record(self.name, received_ns, request)
        d: Deferred[Any] = self.store.store_if_newer(record)
        d.addCallback(self._stored, record, None)
        d.addCallback(lambda _: record.line + b"\n")
        return d.addErrback(self._cannot_serve, request.line)

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
        log.error("cannot serve {line}: {why}", line=line.decode("utf-8", "backslashreplace"),
                  why=failure.getErrorMessage() or repr(failure.value))
        return refusal(line)

    # -- peer messages ----------------------------------------------------

    def peer_line(self, line: bytes, peer: bytes, conn: PeerConnection) -> None:
        """A line from an authenticated peer (message kinds: herd.reconcile)."""
        kind, _, rest = line.partition(b" ")
        if kind == UPDATE:
            self._peer_update(rest, peer, conn)
        elif kind == SKIP:
            self._peer_skip(rest, peer, conn)
        elif kind == RECORD:
            self._apply(rest, peer, None, conn)
        elif kind == SYNC:
            self.reconciler.serve(peer, conn, rest.strip())
        elif kind == SYNC_END:
            self.reconciler.sync_end(peer, rest.strip())
        elif kind == PULL:
            self.reconciler.pull(peer, conn)
        else:
            log.warn("peer {peer} sent an unexpected line: {line}", peer=peer.decode(),
                     line=line[:200].decode("utf-8", "backslashreplace"))

    def _peer_update(self, rest: bytes, peer: bytes, conn: PeerConnection) -> None:
        prev_token, _, rest = rest.partition(b" ")
        pos_token, _, at_line = rest.partition(b" ")
        prev, pos = Position.parse(prev_token), Position.parse(pos_token)
        if prev is None or pos is None or prev.epoch != pos.epoch:
            # Unchained: sent during a SYNC answer (which covers it) or on a link
            # with no chain yet; only in the latter case is a pull needed.
            if not self.reconciler.is_pulling(peer):
                self.reconciler.gap(peer, conn)
            self._apply(at_line, peer, None, conn)
        else:
            self._apply(at_line, peer, Chain(peer, prev, pos), conn)

    def _peer_skip(self, rest: bytes, peer: bytes, conn: PeerConnection) -> None:
        prev_token, _, pos_token = rest.partition(b" ")
        prev, pos = Position.parse(prev_token), Position.parse(pos_token.strip())
        if prev is None or pos is None or prev.epoch != pos.epoch:
            log.warn("peer {peer} sent a malformed skip", peer=peer.decode())
            return
        d = self.store.advance_offset(Chain(peer, prev, pos))
        d.addCallback(lambda result: None if result.advanced else self.reconciler.gap(peer, conn))
        d.addErrback(lambda f: self.reconciler.record_lost(peer))

    def _apply(self, at_line: bytes, peer: bytes, chain: Chain | None, conn: PeerConnection) -> None:
        """Store a record from ``peer``; flood it on if newer; with a chain whose
        offset did not advance, pull the gap."""
        record = parse_at_line(at_line)
        if record is None:
            log.warn("peer {peer} sent a malformed record: {line}", peer=peer.decode(),
                     line=at_line[:200].decode("utf-8", "backslashreplace"))
            return
        self.stats.flood_in += 1
        d = self.store.store_if_newer(record, tie_break=True, chain=chain, source=peer)
        d.addCallbacks(self._peer_stored, self._update_lost,
                       callbackArgs=(record, peer, conn, chain is not None), errbackArgs=(record, peer))

    def _peer_stored(self, result: StoreResult, record: AtRecord, peer: bytes, conn: PeerConnection,
                     chained: bool) -> None:
        self._stored(result, record, peer)
        if chained and not result.advanced:
            self.reconciler.gap(peer, conn)

    def _stored(self, result: StoreResult, record: AtRecord, source: bytes | None) -> StoreResult:
        if result.stored and result.position is not None:
            self.stats.stored()
            self.links.flood(record.line, result.position, result.previous, source)
        elif source is not None:
            self.stats.flood_duplicate += 1
        return result

    def _update_lost(self, failure: Failure, record: AtRecord, peer: bytes) -> None:
        log.error("update from {peer} not stored ({why}): {line}", peer=peer.decode(),
                  why=failure.getErrorMessage(), line=record.line.decode("utf-8", "replace"))
        self.reconciler.record_lost(peer)  # the offset stays behind; a later SYNC repairs it
