"""The offline places data set in Redis: a versioned GEO set plus a hash of
rendered results, loaded once and switched atomically.

Keys (prefix = the node's, default ``herd:``):
- ``<prefix>places:version``          the version in use (string)
- ``<prefix>places:<version>:geo``    GEO set, member = place id
- ``<prefix>places:<version>:info``   hash, field = place id, value = result JSON

Loading a version that is already current is a no-op. A new version is
written under its own keys first, then ``places:version`` is switched with
one SET, then the old version's keys are unlinked: a reader sees the old
data set or the new one, never half of one.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks

from storage.store import RedisStore

PLACES_NEARBY = resources.files("storage").joinpath("places_nearby.lua").read_bytes()
CHUNK = 2000  # places per GEOADD/HSET command while loading

# One place as loaded: (id, lon, lat, rendered result JSON)
PlaceRow = tuple[bytes, bytes, bytes, bytes]


class PlacesIndex:
    def __init__(self, store: RedisStore):
        self._store = store
        self._prefix = store.keys.prefix

    def version_key(self) -> bytes:
        return self._prefix + b"places:version"

    def geo_key(self, version: bytes) -> bytes:
        return self._prefix + b"places:" + version + b":geo"

    def info_key(self, version: bytes) -> bytes:
        return self._prefix + b"places:" + version + b":info"

    def current_version(self) -> Deferred[bytes | None]:
        return self._store.call("get", self.version_key())

    @inlineCallbacks
    def load(self, version: bytes, rows: Sequence[PlaceRow]) -> Any:
        """Make ``version`` (with ``rows``) the current data set; no-op when it
        already is. Fires True when it loaded, False when nothing was needed."""
        old = yield self.current_version()
        if old == version:
            return False
        geo, info = self.geo_key(version), self.info_key(version)
        yield self._store.call("execute_command", "DEL", geo, info)  # leftovers of an interrupted load
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start:start + CHUNK]
            geo_args = [x for (pid, lon, lat, _) in chunk for x in (lon, lat, pid)]
            info_args = [x for (pid, _, _, doc) in chunk for x in (pid, doc)]
            yield self._store.call("execute_command", "GEOADD", geo, *geo_args)
            yield self._store.call("execute_command", "HSET", info, *info_args)
        yield self._store.call("set", self.version_key(), version)
        if old:
            yield self._store.call("execute_command", "UNLINK", self.geo_key(old), self.info_key(old))
        return True

    def nearby(
        self, version: bytes, lon: bytes, lat: bytes, radius_m: bytes, count: int
    ) -> Deferred[list[bytes]]:
        """Result JSON of up to ``count`` places within ``radius_m`` metres, nearest first."""
        keys = [self.geo_key(version), self.info_key(version)]
        return self._store.call("eval", PLACES_NEARBY, keys, [lon, lat, radius_m, str(count)])
