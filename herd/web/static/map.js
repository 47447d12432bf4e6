// The world map: Natural Earth outlines in the Equal Earth projection, and
// this node's clients on it, grouped into one marker per screen cell.
import { svg, short } from './util.js';

export const WIDTH = 1000;
const PAD = 4;
const MIN_MERGE_PX = 16; // clients closer than this on screen share one marker...
const MAX_MERGE_PX = 26; // ... up to this on a wide map (width / 40 between)
const DOT_PX = 3.2; // radius of a single client's dot
const MAX_LIST = 8; // client ids listed in a marker's tooltip

// Equal Earth (Šavrič, Patterson, Jenny 2018), forward formulas.
const A1 = 1.340264;
const A2 = -0.081106;
const A3 = 0.000893;
const A4 = 0.003796;
const M = Math.sqrt(3) / 2;
const RAD = Math.PI / 180;

function equalEarth(lon, lat) {
  const theta = Math.asin(M * Math.sin(lat * RAD));
  const t2 = theta * theta;
  const t6 = t2 * t2 * t2;
  const x = (lon * RAD * Math.cos(theta)) / (M * (A1 + 3 * A2 * t2 + t6 * (7 * A3 + 9 * A4 * t2)));
  const y = theta * (A1 + A2 * t2 + t6 * (A3 + A4 * t2));
  return [x, y];
}

const X_MAX = equalEarth(180, 0)[0];
const Y_MAX = equalEarth(0, 90)[1];
const SCALE = (WIDTH - 2 * PAD) / (2 * X_MAX);
export const HEIGHT = Math.ceil(2 * Y_MAX * SCALE + 2 * PAD);

/** [x, y] in the map's SVG units of a longitude and latitude in degrees. */
export function project(lon, lat) {
  const [x, y] = equalEarth(lon, lat);
  return [WIDTH / 2 + x * SCALE, HEIGHT / 2 - y * SCALE];
}

/** SVG path data of a line through [lon, lat] points (closed when `close`). */
function pathOf(points, close) {
  let d = '';
  for (const [lon, lat] of points) {
    const [x, y] = project(lon, lat);
    d += `${d ? 'L' : 'M'}${x.toFixed(1)},${y.toFixed(1)}`;
  }
  return close ? `${d}Z` : d;
}

/** [lon, lat] pairs of a flat array of integers in `unit` degrees, `shift` degrees east. */
function pairs(flat, unit, shift = 0) {
  const out = [];
  for (let i = 0; i < flat.length; i += 2) out.push([flat[i] * unit + shift, flat[i + 1] * unit]);
  return out;
}

/**
 * Path data of a land ring. A ring across the antimeridian has longitudes
 * past +-180 (see ops/web/build_map.py): it is drawn again 360 degrees over,
 * and the map is clipped to its outline, so each side shows its part.
 */
function ringPath(ring, unit) {
  let lowest = Infinity;
  let highest = -Infinity;
  for (let i = 0; i < ring.length; i += 2) {
    lowest = Math.min(lowest, ring[i] * unit);
    highest = Math.max(highest, ring[i] * unit);
  }
  let d = pathOf(pairs(ring, unit), true);
  if (highest > 180) d += pathOf(pairs(ring, unit, -360), true);
  if (lowest < -180) d += pathOf(pairs(ring, unit, 360), true);
  return d;
}

function range(from, to, step) {
  const out = [];
  for (let v = from; v <= to + 1e-9; v += step) out.push(v);
  return out;
}

function graticule() {
  const lines = [];
  for (const lon of range(-150, 150, 30)) lines.push(range(-90, 90, 3).map((lat) => [lon, lat]));
  for (const lat of range(-60, 60, 30)) lines.push(range(-180, 180, 3).map((lon) => [lon, lat]));
  return lines.map((line) => pathOf(line, false)).join('');
}

function outline() {
  const east = range(-90, 90, 2).map((lat) => [180, lat]);
  const west = range(-90, 90, 2).reverse().map((lat) => [-180, lat]);
  return pathOf([...east, ...west], true);
}

export class WorldMap {
  /** `target`: the <svg> to draw into. */
  constructor(target) {
    this.svg = target;
    this.svg.setAttribute('viewBox', `0 0 ${WIDTH} ${HEIGHT}`);
    this.base = svg('g', { 'clip-path': 'url(#map-clip)' });
    this.markers = svg('g', { class: 'markers' });
    const clip = svg('clipPath', { id: 'map-clip' }, svg('path', { d: outline() }));
    this.svg.replaceChildren(svg('defs', {}, clip), svg('path', { class: 'sphere', d: outline() }), this.base,
      this.markers);
    this.points = [];
    this.total = 0;
    new ResizeObserver(() => this.redraw()).observe(this.svg);
  }

  /** Draw the land, its borders and a graticule from world.json (see ops/web/build_map.py). */
  async load(url) {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
    const world = await response.json();
    const land = world.land.map((ring) => ringPath(ring, world.unit)).join('');
    const borders = world.borders.map((line) => pathOf(pairs(line, world.unit), false)).join('');
    this.base.replaceChildren(
      svg('path', { class: 'graticule', d: graticule() }),
      svg('path', { class: 'land', d: land }),
      svg('path', { class: 'borders', d: borders }),
    );
  }

  /** Show `points` ([[lat, lon, id], ...], a sample of `total` clients). */
  show(points, total) {
    const started = performance.now();
    this.points = points.map(([lat, lon, id]) => ({ lat, lon, id, xy: project(lon, lat) }));
    this.total = total;
    this.redraw();
    this.svg.dataset.drawMs = (performance.now() - started).toFixed(1);
  }

  clear() {
    this.show([], 0);
  }

  /**
   * Group the points into markers: each point joins the first marker whose
   * seed lies within `merge` screen pixels, else seeds a new one (found through
   * a grid of merge-sized cells, so O(points)). A marker is drawn at its
   * seed: seeds are at least `merge` pixels apart and circles at most
   * merge/2 in radius, so markers never cover each other. The merge distance follows the drawn
   * width, so a phone gets fewer, smaller markers.
   */
  redraw() {
    const width = this.svg.getBoundingClientRect().width || WIDTH;
    const perPx = WIDTH / width; // SVG units per screen pixel
    const mergePx = Math.max(MIN_MERGE_PX, Math.min(MAX_MERGE_PX, width / 40));
    const merge = mergePx * perPx;
    const cells = new Map();
    const groups = [];
    for (const point of this.points) {
      const [x, y] = point.xy;
      const cx = Math.floor(x / merge);
      const cy = Math.floor(y / merge);
      let home = null;
      for (let dx = -1; dx <= 1 && !home; dx += 1) {
        for (let dy = -1; dy <= 1 && !home; dy += 1) {
          for (const group of cells.get(`${cx + dx}:${cy + dy}`) || []) {
            if ((group.x - x) ** 2 + (group.y - y) ** 2 <= merge * merge) {
              home = group;
              break;
            }
          }
        }
      }
      if (home) {
        home.points.push(point);
      } else {
        const group = { x, y, points: [point] };
        groups.push(group);
        const key = `${cx}:${cy}`;
        if (cells.has(key)) cells.get(key).push(group);
        else cells.set(key, [group]);
      }
    }
    const scale = this.points.length ? this.total / this.points.length : 1;
    const markers = groups.map((group) => this.marker(group.points, scale, perPx, mergePx));
    this.markers.replaceChildren(...markers);
    this.svg.dataset.points = String(this.points.length);
    this.svg.dataset.markers = String(markers.length);
    this.svg.dataset.total = String(this.total);
  }

  marker(group, scale, perPx, mergePx) {
    const n = group.length;
    if (n === 1) {
      const [p] = group;
      return svg('circle', {
        class: 'client', cx: p.xy[0].toFixed(2), cy: p.xy[1].toFixed(2), r: (DOT_PX * perPx).toFixed(2),
        'data-count': 1, 'data-id': p.id, 'data-lat': p.lat, 'data-lon': p.lon,
      }, svg('title', {}, `${p.id} (${p.lat.toFixed(4)}, ${p.lon.toFixed(4)})`));
    }
    const [x, y] = group[0].xy; // the seed: seeds are a merge distance apart, so circles do not overlap
    const clients = Math.round(n * scale);
    const label = short(clients);
    const rPx = Math.min(4 + 2.2 * Math.log2(n), mergePx / 2);
    const ids = group.slice(0, MAX_LIST).map((p) => p.id).join(', ') + (n > MAX_LIST ? ', …' : '');
    const sampled = scale > 1 ? ` (about; ${n} in the sample)` : '';
    const marker = svg('g', { class: 'group', 'data-count': n },
      svg('title', {}, `${label} clients here${sampled}: ${ids}`),
      svg('circle', { class: 'cluster', cx: x.toFixed(2), cy: y.toFixed(2), r: (rPx * perPx).toFixed(2),
        'stroke-width': (1.2 * perPx).toFixed(2) }));
    const fontPx = Math.min(10.5, (2 * rPx - 2) / Math.max(1.6, label.length * 0.62));
    if (fontPx >= 7) {
      marker.append(svg('text', { class: 'count', x: x.toFixed(2), y: y.toFixed(2),
        'font-size': (fontPx * perPx).toFixed(2) }, label));
    }
    return marker;
  }
}
