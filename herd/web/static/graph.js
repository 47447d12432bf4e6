// The topology graph: nodes on a circle, each link drawn in its state.
import { svg } from './util.js';

const WIDTH = 420;
const HEIGHT = 330;
const NODE_R = 20;

/** Where each node sits: evenly on a circle, the first at the top, in config order. */
function layout(names) {
  const places = new Map();
  const cx = WIDTH / 2;
  const cy = HEIGHT / 2 - 8;
  const r = names.length <= 1 ? 0 : Math.min(WIDTH, HEIGHT) / 2 - 52;
  names.forEach((name, i) => {
    const angle = -Math.PI / 2 + (2 * Math.PI * i) / names.length;
    places.set(name, [cx + r * Math.cos(angle), cy + r * Math.sin(angle)]);
  });
  return places;
}

/** Label under a node, or above it for nodes in the upper half (away from the links). */
function labelOffset(y) {
  return y < HEIGHT / 2 - 20 ? -NODE_R - 22 : NODE_R + 18;
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
    const dy = labelOffset(y);
    const group = svg('g', { class: 'node', 'data-node': name, 'data-state': state, transform: `translate(${x} ${y})` },
      svg('title', {}, `${name}: ${WORD[state]}${here ? ' (this node)' : ''}`));
    if (here) group.append(svg('circle', { class: 'halo', r: NODE_R + 6 }));
    group.append(
      svg('circle', { class: 'body', r: NODE_R }),
      svg('text', { class: 'glyph', y: 1 }, GLYPH[state]),
      svg('text', { y: dy }, name),
      svg('text', { class: 'sub', y: dy + 14 }, here ? `${WORD[state]} · this node` : WORD[state]),
    );
    return group;
  });
  target.replaceChildren(...links, ...nodes);
}
