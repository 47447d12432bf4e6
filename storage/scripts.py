"""The Lua code of the node's storage, one constant per ``.lua`` file of this
package, read once at import."""

from __future__ import annotations

from importlib import resources


def _lua(name: str) -> bytes:
    return resources.files("storage").joinpath(name).read_bytes()


STORE_BATCH = _lua("store_batch.lua")  # a Redis function library (storage.redis_client.FunctionCall)
LOG_SINCE = _lua("log_since.lua")
LOG_HEAD = _lua("log_head.lua")
LOG_CHECK = _lua("log_check.lua")
SCAN_RECORDS = _lua("scan_records.lua")
SCAN_TIMES = _lua("scan_times.lua")
GEO_SAMPLE = _lua("geo_sample.lua")
PLACES_CHUNK = _lua("places_chunk.lua")
PLACES_NEARBY = _lua("places_nearby.lua")
PLACES_STATE = _lua("places_state.lua")
PLACES_SWITCH = _lua("places_switch.lua")
