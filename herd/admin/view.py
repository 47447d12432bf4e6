"""What the admin endpoint reads of a running node, and the one thing it asks
Redis: the summary hash (count and digest of the clients held), read at most
once a second and never waited for longer than a second."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from config.schema import HerdConfig
from herd.client_port import ClientConnectionFactory
from herd.node import Node
from herd.peer.links import PeerLinks
from storage.store import RedisStore, Summary

SUMMARY_TIMEOUT = 1.0  # seconds an answer waits for Redis before saying it is down
SUMMARY_MAX_AGE = 1.0  # seconds a summary read serves later requests


class RunningNode(Protocol):
    """What the admin endpoint reads of a running node (herd.service.NodeService)."""

    node: Node
    store: RedisStore
    links: PeerLinks
    listener: Any  # the client listener, an IService
    factory: ClientConnectionFactory  # the client port's connections

    @property
    def config(self) -> HerdConfig:
        """The herd's config as the node runs it now (a reload may change it)."""


@dataclass(frozen=True)
class Addresses:
    """Where the node listens and where its Redis is, each as ``host:port``."""

    client: str
    peer: str
    admin: str
    redis: str


def client_connections(running: RunningNode) -> int:
    """Open client connections (peers connect to the peer port)."""
    return len(running.factory.connections)


def redis_up(running: RunningNode, held: Summary | None) -> bool:
    """Redis is up when the store takes writes and ``held`` was read."""
    return held is not None and running.store.answering


class SummaryReader:
    """The summary hash as of at most ``max_age`` seconds ago and of every
    store batch answered so far, or None when Redis did not answer within
    ``timeout`` seconds or is not connected now. (A read is served again only
    while no store batch was answered since it began: a node catching up
    after a pause or a partition must not show the digest of a moment ago
    next to its peers' current ones.)

    Requests that come while a read is under way share it; the store's own
    call is never cancelled (a late answer is just dropped), so a slow read
    here does not count against the store."""

    def __init__(self, store: RedisStore, reactor: IReactorTime, timeout: float = SUMMARY_TIMEOUT,
                 max_age: float = SUMMARY_MAX_AGE):
        self._store = store
        self._reactor = reactor
        self._timeout = timeout
        self._max_age = max_age
        self._last: Summary | None = None
        self._read_at: float | None = None  # when the read that gave _last started
        self._answered_at_read = -1  # the store's batches_answered then
        self._waiting: list[Deferred[Summary | None]] | None = None  # a read is under way
        self._reads = 0  # reads started; a late answer to an earlier one is dropped

    def current(self) -> Deferred[Summary | None]:
        """Fires (never fails) with the summary, or None when Redis could not be read."""
        now = self._reactor.seconds()
        if not self._store.connected:  # known unreadable: no cached figures, no waiting
            return succeed(None)
        if self._waiting is None and self._read_at is not None and now - self._read_at < self._max_age \
                and self._store.batches_answered == self._answered_at_read:
            return succeed(self._last)
        waiter: Deferred[Summary | None] = Deferred()
        if self._waiting is not None:
            self._waiting.append(waiter)
            return waiter
        self._waiting = [waiter]
        self._reads += 1
        self._read_at = now
        self._answered_at_read = self._store.batches_answered
        read = self._reads
        timer = self._reactor.callLater(self._timeout, self._done, None, read)
        d = self._store.summary()
        d.addCallbacks(self._done, lambda _: self._done(None, read), callbackArgs=(read,))
        d.addBoth(lambda _: timer.cancel() if timer.active() else None)
        return waiter

    def _done(self, held: Summary | None, read: int) -> None:
        if read != self._reads or self._waiting is None:
            return  # this read timed out (or finished) already
        self._last = held
        waiting, self._waiting = self._waiting, None
        for waiter in waiting:
            waiter.callback(held)
