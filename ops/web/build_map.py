"""Turn world-atlas's TopoJSON (Natural Earth 1:110m) into the compact map
data the admin web page draws: herd/web/static/world.json.

Run by ops/web/build-map.sh (which installs world-atlas from npm first); the
node never imports this. Output, all coordinates as integers in tenths of a
degree (0.1 deg is about a third of a pixel on a 1366-pixel-wide world map)::

    {"unit": 0.1,
     "land": [[lon, lat, lon, lat, ...], ...],     closed rings, holes included;
                                                   longitudes may pass +-180 (see unwrap)
     "borders": [[lon, lat, ...], ...]}            land borders between countries

Usage: python3 build_map.py WORLD_ATLAS_DIR OUTPUT_JSON
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

UNIT = 0.1  # degrees per output integer


def decode_arcs(topology: dict[str, Any]) -> list[list[tuple[float, float]]]:
    """Every arc of a quantized TopoJSON topology as (lon, lat) points."""
    (sx, sy), (tx, ty) = topology["transform"]["scale"], topology["transform"]["translate"]
    arcs = []
    for arc in topology["arcs"]:
        x = y = 0
        points = []
        for dx, dy in arc:
            x, y = x + dx, y + dy
            points.append((x * sx + tx, y * sy + ty))
        arcs.append(points)
    return arcs


def arc_points(arcs: list[list[tuple[float, float]]], index: int) -> list[tuple[float, float]]:
    """Arc ``index`` in its direction: a negative index ~i is arc i reversed."""
    return arcs[index] if index >= 0 else arcs[~index][::-1]


def polygons(geometry: dict[str, Any]) -> list[list[list[int]]]:
    """A Polygon's or MultiPolygon's rings (lists of arc indices), polygon by polygon."""
    if geometry["type"] == "Polygon":
        return [geometry["arcs"]]
    if geometry["type"] == "MultiPolygon":
        return list(geometry["arcs"])
    return []


def unwrap(ring: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """A closed ring without jumps across the antimeridian: each longitude
    within 180 degrees of the one before (so some go past +-180; the page
    draws such a ring again 360 degrees over, clipped to the map). A ring
    that goes round a pole (Antarctica) ends 360 degrees from where it began,
    and is closed over that pole."""
    out = [ring[0]]
    for lon, lat in ring[1:]:
        before = out[-1][0]
        while lon - before > 180:
            lon -= 360
        while lon - before < -180:
            lon += 360
        out.append((lon, lat))
    if abs(out[-1][0] - out[0][0]) > 180:
        pole = 90.0 if sum(lat for _, lat in out) > 0 else -90.0
        out += [(out[-1][0], pole), (out[0][0], pole), out[0]]
    return out


def quantize(points: list[tuple[float, float]]) -> list[int]:
    """Flat [lon, lat, ...] in UNITs, without consecutive repeats."""
    out: list[int] = []
    for lon, lat in points:
        q = [round(lon / UNIT), round(lat / UNIT)]
        if out[-2:] != q:
            out.extend(q)
    return out


def land_rings(topology: dict[str, Any]) -> list[list[int]]:
    arcs = decode_arcs(topology)
    rings = []
    for geometry in topology["objects"]["land"]["geometries"]:
        for polygon in polygons(geometry):
            for ring in polygon:
                points: list[tuple[float, float]] = []
                for index in ring:
                    part = arc_points(arcs, index)
                    points.extend(part if not points else part[1:])
                flat = quantize(unwrap(points))
                if len(flat) >= 8:  # at least a triangle (closed: 4 points)
                    rings.append(flat)
    return rings


def borders(topology: dict[str, Any]) -> list[list[int]]:
    """Arcs shared by two countries: the land borders (coasts belong to one)."""
    arcs = decode_arcs(topology)
    users: dict[int, set[int]] = {}
    for number, geometry in enumerate(topology["objects"]["countries"]["geometries"]):
        for polygon in polygons(geometry):
            for ring in polygon:
                for index in ring:
                    users.setdefault(index if index >= 0 else ~index, set()).add(number)
    lines = [quantize(arcs[i]) for i, owners in sorted(users.items()) if len(owners) > 1]
    return [line for line in lines if len(line) >= 4]


def main(atlas: str, output: str) -> None:
    base = Path(atlas)
    data = {
        "unit": UNIT,
        "source": "Natural Earth 1:110m (public domain) via world-atlas 2.0.2 (ISC), see LICENSES.txt",
        "land": land_rings(json.loads((base / "land-110m.json").read_text())),
        "borders": borders(json.loads((base / "countries-110m.json").read_text())),
    }
    text = json.dumps(data, separators=(",", ":"))
    Path(output).write_text(text + "\n")
    points = sum(len(r) for r in data["land"] + data["borders"]) // 2
    print(f"{output}: {len(data['land'])} land rings, {len(data['borders'])} borders, "
          f"{points} points, {len(text)} bytes")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("\n\n")[-1])
    main(sys.argv[1], sys.argv[2])
