"""An answer cache in front of a paying places provider.

Answers are kept in the node's Redis under
``<prefix>places:cache:<provider>:<lat>,<lon>:<radius-m>[:<limit>]`` for
``ttl`` seconds, so the same question (client position, radius and, for
providers whose answer depends on it, the bound) costs one API call per TTL.
Callers still cut the cached results to the bound they asked. Callers asking
the same question while it is on its way share its answer (or failure).
Failures are never cached, and a cache Redis cannot serve is skipped, not
fatal.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from twisted.internet.defer import Deferred, fail, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from herd.logs import Throttle
from herd.places.provider import PlacesAnswer, PlacesProvider, radius_text
from storage.store import RedisStore, StoreUnavailable

log = Logger(namespace="herd")


class CachedPlaces:
    def __init__(self, inner: PlacesProvider, store: RedisStore, ttl: int, name: str,
                 limit_in_key: bool, clock: IReactorTime):
        # While Redis refuses writes (full), every answer fails to be cached:
        # ten warnings a second at most, fewer as it goes on (herd.logs.Throttle).
        self._unwritten = Throttle(
            clock, log.warn, "places cache not written {n} more time(s) in the last {window} "
            "(the last: {last})")
        self._inner = inner
        self._store = store
        self._ttl = ttl
        self._name = name
        self._limit_in_key = limit_in_key
        self.hits = 0
        self.misses = 0
        # Questions on their way to the provider, with each caller waiting for
        # the answer (one Deferred each: one caller's cancel leaves the others
        # alone), and answers still being written to Redis: one API call for
        # all who ask meanwhile.
        self._asking: dict[bytes, list[Deferred[PlacesAnswer]]] = {}
        self._writing: dict[bytes, PlacesAnswer] = {}

    def cache_key(self, lat: str, lon: str, radius_m: Decimal, limit: int) -> bytes:
        key = f"{self._name}:{lat},{lon}:{radius_text(radius_m)}"
        if self._limit_in_key:
            key += f":{limit}"
        return self._store.keys.places_cache(key.encode())

    @inlineCallbacks
    def nearby(self, lat: str, lon: str, radius_m: Decimal, limit: int) -> Any:
        key = self.cache_key(lat, lon, radius_m, limit)
        cached = None
        if key not in self._asking and key not in self._writing:
            try:
                cached = yield self._store.call("get", key)
            except StoreUnavailable:
                pass
        if key in self._writing:
            cached = json.dumps(self._writing[key])
        if cached:
            self.hits += 1
            return json.loads(cached)
        first = key not in self._asking
        if first:
            self.misses += 1
            self._asking[key] = []
        waiters = self._asking[key]
        mine: Deferred[PlacesAnswer] = Deferred(lambda d: waiters.remove(d) if d in waiters else None)
        waiters.append(mine)
        if first:  # (after joining the waiters: a provider may answer at once)
            self._ask(key, lat, lon, radius_m, limit)
        return (yield mine)

    def _ask(self, key: bytes, lat: str, lon: str, radius_m: Decimal, limit: int) -> None:
        """One call to the provider for everyone asking ``key`` meanwhile."""
        try:
            asked = self._inner.nearby(lat, lon, radius_m, limit)
        except Exception:
            asked = fail()
        asked.addCallbacks(self._answered, self._failed, callbackArgs=(key,), errbackArgs=(key,))

    def _answered(self, answer: PlacesAnswer, key: bytes) -> None:
        self._writing[key] = answer  # until Redis has it: later callers read it here
        self._remember(key, answer).addBoth(lambda _: self._writing.pop(key, None))
        for waiter in self._asking.pop(key):
            waiter.callback(answer)

    def _failed(self, failure: Failure, key: bytes) -> None:
        for waiter in self._asking.pop(key):
            waiter.errback(failure)

    def _remember(self, key: bytes, answer: dict[str, Any]) -> Deferred[Any]:
        d = self._store.call("execute_command", "SET", key, json.dumps(answer).encode(), "EX", self._ttl)
        return d.addErrback(self._not_written)

    def _not_written(self, failure: Failure) -> None:
        why = failure.getErrorMessage()
        if self._unwritten.allow(why):
            log.warn("places cache not written: {why}", why=why)

