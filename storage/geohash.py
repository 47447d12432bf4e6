"""Redis GEO scores back to positions, as GEOPOS computes them.

A GEO set's score is a 52-bit geohash: 26 bits of latitude (over Redis's
-85.05112878..85.05112878) in the even bit positions interleaved with 26 bits
of longitude (-180..180) in the odd ones. GEOPOS answers the centre of that
cell; :func:`position` does the same arithmetic, so a sample read with scores
(storage/geo_sample.lua) needs no GEOPOS call inside Redis.
"""

from __future__ import annotations

GEO_STEP = 26  # bits per coordinate
LAT_MIN, LAT_MAX = -85.05112878, 85.05112878
LON_MIN, LON_MAX = -180.0, 180.0
_CELLS = float(1 << GEO_STEP)
_MASKS = ((0x5555555555555555, 0), (0x3333333333333333, 1), (0x0F0F0F0F0F0F0F0F, 2),
          (0x00FF00FF00FF00FF, 4), (0x0000FFFF0000FFFF, 8), (0x00000000FFFFFFFF, 16))


def _even_bits(value: int) -> int:
    """Bits 0, 2, 4, ... of ``value`` packed together (Redis's deinterleave64)."""
    for mask, shift in _MASKS:
        value = (value | (value >> shift)) & mask
    return value


def position(score: int) -> tuple[float, float]:
    """(latitude, longitude) of a GEO score: the centre of its cell, clamped
    to the valid ranges like GEOPOS."""
    lat_cell, lon_cell = _even_bits(score), _even_bits(score >> 1)
    return _centre(lat_cell, LAT_MIN, LAT_MAX), _centre(lon_cell, LON_MIN, LON_MAX)


def _centre(cell: int, low: float, high: float) -> float:
    """The middle of ``cell`` in ``low..high``, in Redis's order of floating
    point operations (geohashDecode, geohashDecodeAreaToLongLat): GEOPOS
    answers this number, printed to 17 decimals."""
    scale = high - low
    first = low + (cell * 1.0 / _CELLS) * scale
    last = low + ((cell + 1) * 1.0 / _CELLS) * scale
    return min(max((first + last) / 2, low), high)
