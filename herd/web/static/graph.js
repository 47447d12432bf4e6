// The topology graph: nodes on a circle, each link drawn in its state.
import { svg } from './util.js';

const WIDTH = 480;
const HEIGHT = 340;
const NODE_R = 20;
const TOP = 64; // room for the labels above the upper nodes
const BOTTOM = 44; // ... and below the lower ones

/** Where each node sits: evenly on a circle, the first at the top, in config order. */
function layout(names) {
  const places = new Map();
  const cx = WIDTH / 2;
  const cy = (TOP + HEIGHT - BOTTOM) / 2;
  const r = names.length <= 1 ? 0 : (HEIGHT - BOTTOM - TOP) / 2;
  names.forEach((name, i) => {
    const angle = -Math.PI / 2 + (2 * Math.PI * i) / names.length;
    places.set(name, [cx + r * Math.cos(angle), cy + r * Math.sin(angle)]);
  });
  return places;
}

/**
 * Where a node's label goes: outside the circle, so no link (a chord) crosses
 * it: above the top nodes, below the bottom ones, beside the others.
 * Returns [dx, dy, text-anchor] of the name; the state goes one line under.
 */
function labelPlace(x, y) {
  const cx = WIDTH / 2;
  const cy = (TOP + HEIGHT - BOTTOM) / 2;
  const angle = Math.atan2(y - cy, x - cx);
  if (Math.abs(Math.cos(angle)) < 0.5 || (x === cx && y === cy)) {
    return y < cy ? [0, -NODE_R - 28, 'middle'] : [0, NODE_R + 18, 'middle'];
  }
  return Math.cos(angle) > 0 ? [NODE_R + 10, -2, 'start'] : [-NODE_R - 10, -2, 'end'];
}

/** A name cut to fit a label (the whole name is in the tooltip). */
function fit(name) {
  return name.length > 14 ? `${name.slice(0, 13)}…` : name;
}

const GLYPH = { up: '✓', warn: '!', down: '✕', unknown: '?' };
const WORD = { up: 'up', warn: 'Redis down', down: 'DOWN', unknown: '…' };

/**
 * Draw the herd into the SVG element `target`.
 * view: {here, nodes: [{name, state}], links: [{a, b, state}]}; states are
 * "up", "warn" (up, its Redis down), "down" or "unknown".
 */
export function drawGraph(target, view) {
  target.setAttribute('viewBox', `0 0 ${WIDTH} ${HEIGHT}`);
  const places = layout(view.nodes.map((n) => n.name));
  const links = view.links.map(({ a, b, state }) => {
    const [x1, y1] = places.get(a);
    const [x2, y2] = places.get(b);
    return svg('line', { class: 'link', x1, y1, x2, y2, 'data-link': `${a}-${b}`, 'data-state': state },
      svg('title', {}, `link ${a} – ${b}: ${state}`));
  });
  const nodes = view.nodes.map(({ name, state }) => {
    const [x, y] = places.get(name);
    const here = name === view.here;
    const [dx, dy, anchor] = labelPlace(x, y);
    const group = svg('g', { class: 'node', 'data-node': name, 'data-state': state, transform: `translate(${x} ${y})` },
      svg('title', {}, `${name}: ${WORD[state]}${here ? ' (this node)' : ''}`));
    if (here) group.append(svg('circle', { class: 'halo', r: NODE_R + 6 }));
    group.append(
      svg('circle', { class: 'body', r: NODE_R }),
      svg('text', { class: 'glyph', y: 1 }, GLYPH[state]),
      svg('text', { x: dx, y: dy, 'text-anchor': anchor }, fit(name)),
      svg('text', { class: 'sub', x: dx, y: dy + 14, 'text-anchor': anchor }, WORD[state]),
    );
    return group;
  });
  target.replaceChildren(...links, ...nodes);
}
