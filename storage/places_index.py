"""The offline places data set in Redis: a versioned GEO set plus a hash of
rendered results, loaded once and switched atomically.

Keys (storage.keys.Keys: places_version, places_geo, places_info), and the
last two with ``:loading:<load>`` appended while a load writes them
(``<load>``: random, one per load; they expire unless the load goes on).

A load writes its own ``:loading:<load>`` keys, a chunk of places at a time
(each chunk with the keys' expiry, in one script), then one script checks they
hold every place, renames them into place, sets ``places:version`` and
unlinks the keys of the version it replaces: a reader sees the old data set
or the new one, never half of one, and concurrent loads do not disturb each
other. Searches use whichever version ``places:version`` names.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks

from storage.scripts import PLACES_CHUNK, PLACES_NEARBY, PLACES_STATE, PLACES_SWITCH
from storage.store import RedisStore

CHUNK = 2000  # places per call of places_chunk.lua while loading
LOADING_TTL_MS = 600_000  # a load's keys expire this long after its last chunk (a load that died)

# One place as loaded: (id, lon, lat, rendered result JSON)
PlaceRow = tuple[bytes, bytes, bytes, bytes]


class PlacesIndex:
    def __init__(self, store: RedisStore):
        self._store = store
        self._keys = store.keys
        self._prefix = store.keys.prefix

    def whole_version(self) -> Deferred[bytes | None]:
        """The version in use if its data set is whole (see places_state.lua), else None."""
        return self._store.call("eval", PLACES_STATE, [self._keys.places_version], [self._prefix])

    @inlineCallbacks
    def load(self, version: bytes, rows: Sequence[PlaceRow]) -> Any:
        """Make ``version`` (with ``rows``) the data set in use; a no-op when it
        already is, whole. Fires True when it loaded, False when nothing was needed."""
        if (yield self.whole_version()) == version:
            return False
        if not rows:
            raise ValueError("no places to load")
        load = b":loading:" + secrets.token_hex(8).encode()
        geo, info = self._keys.places_geo(version) + load, self._keys.places_info(version) + load
        for start in range(0, len(rows), CHUNK):
            fields = [field for row in rows[start:start + CHUNK] for field in row]
            yield self._store.call("eval", PLACES_CHUNK, [geo, info], [str(LOADING_TTL_MS), *fields])
        places = len({pid for (pid, _, _, _) in rows})
        yield self._store.call("eval", PLACES_SWITCH, [self._keys.places_version, geo, info],
                               [self._prefix, version, str(places)])
        return True

    def nearby(self, lon: bytes, lat: bytes, radius_m: bytes, count: int) -> Deferred[list[Any] | None]:
        """Result JSON of up to ``count`` places within ``radius_m`` metres,
        nearest first (None for a place missing from the hash); None when no
        data set is in Redis."""
        d = self._store.call("eval", PLACES_NEARBY, [self._keys.places_version],
                             [self._prefix, lon, lat, radius_m, str(count)])
        return d.addCallback(lambda reply: reply[1:] if reply else None)
