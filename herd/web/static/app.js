// herd admin page: fetch the topology once, then every `refresh` seconds
// poll /status of every node (this one and the others, straight from the
// browser) and, with the admin token, this node's /clients.json.
import { drawGraph } from './graph.js';
import { WorldMap } from './map.js';
import { count, duration, html, rate } from './util.js';

const STATUS_TIMEOUT_MS = 1500; // a node slower than this is drawn down for this round
const TOKEN_KEY = 'herd-admin-token'; // sessionStorage: gone when the tab closes
const STALE_AFTER_S = 60; // a last update older than this is shown in amber

const $ = (id) => document.getElementById(id);
const clientsOf = (n) => `${count(n)} client${n === 1 ? '' : 's'}`;

const page = {
  topology: null, // /topology.json
  statuses: new Map(), // node name -> {status, error, at}
  map: null,
  refreshes: 0,
  tokenRefused: false, // the last token entered was refused
};

/** GET `url` as JSON within `timeout` ms; throws an Error saying why not. */
async function getJSON(url, { timeout = STATUS_TIMEOUT_MS, headers = {} } = {}) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), timeout);
  try {
    const response = await fetch(url, {
      signal: abort.signal, headers, cache: 'no-store', credentials: 'omit', referrerPolicy: 'no-referrer',
    });
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const error = new Error((body && body.error) || `HTTP ${response.status}`);
      error.status = response.status;
      throw error;
    }
    return body;
  } catch (err) {
    if (err.name === 'AbortError') throw new Error(`no answer within ${STATUS_TIMEOUT_MS / 1000} s`);
    if (err instanceof TypeError) throw new Error('no answer (unreachable, or not serving /status)');
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

/** Where this page reads node `node`'s /status: its own origin for this node. */
function statusUrl(node) {
  if (node.name === page.topology.node) return '/status';
  return node.admin ? `http://${node.admin}/status` : null;
}

async function pollStatuses() {
  const polls = page.topology.nodes.map(async (node) => {
    const url = statusUrl(node);
    if (!url) return [node.name, { status: null, error: 'admin endpoint off', at: Date.now() }];
    try {
      return [node.name, { status: await getJSON(url), error: null, at: Date.now() }];
    } catch (err) {
      return [node.name, { status: null, error: err.message, at: Date.now() }];
    }
  });
  page.statuses = new Map(await Promise.all(polls));
}

/** "up", "warn" (answering, its Redis down) or "down" (no answer). */
function nodeState(name) {
  const seen = page.statuses.get(name);
  if (!seen) return 'unknown';
  if (!seen.status) return 'down';
  return seen.status.redis && seen.status.redis.state === 'up' ? 'up' : 'warn';
}

/** Up when either end reports it up; down when every end that answered reports it down; else unknown. */
export function linkState(a, b, statuses) {
  const reports = [];
  for (const [me, other] of [[a, b], [b, a]]) {
    const seen = statuses.get(me);
    if (!seen || !seen.status) continue;
    const link = seen.status.links && seen.status.links[other];
    reports.push(link ? link.state : null);
  }
  if (reports.includes('up')) return 'up';
  if (reports.length && reports.every((state) => state === 'down')) return 'down';
  return 'unknown';
}

function view() {
  const topo = page.topology;
  return {
    here: topo.node,
    nodes: topo.nodes.map(({ name }) => ({ name, state: nodeState(name) })),
    links: topo.links.map(([a, b]) => ({ a, b, state: linkState(a, b, page.statuses) })),
  };
}

function figure(label, value, cls) {
  return html('div', { class: cls ? `fig ${cls}` : 'fig' },
    html('span', { class: 'label' }, label), html('span', { class: 'value' }, value));
}

function card(name, state) {
  const here = name === page.topology.node;
  const seen = page.statuses.get(name);
  const s = seen && seen.status;
  const head = html('header', {},
    html('span', { class: 'name', title: name }, name),
    here ? html('span', { class: 'badge' }, 'this node') : '',
    s ? html('span', { class: 'version', title: `herd version ${s.version}` }, `v${s.version}`) : '',
    html('span', { class: 'state' }, { up: 'UP', warn: 'UP', down: 'DOWN', unknown: '…' }[state]));
  const box = html('article', { class: here ? 'card here' : 'card', 'data-node': name, 'data-state': state }, head);
  if (!s) {
    box.append(html('p', { class: 'error' }, seen ? seen.error : 'asking…'));
    return box;
  }
  const since = (Date.now() - seen.at) / 1000; // the figures are this old
  const age = s.last_update ? s.clock - s.last_update + since : null;
  const links = Object.values(s.links || {});
  const up = links.filter((l) => l.state === 'up').length;
  const redisUp = s.redis && s.redis.state === 'up';
  box.append(html('div', { class: 'figs' },
    figure('clients', count(s.clients)),
    figure('requests', rate(s.rate)),
    figure('last update', age === null ? 'never' : `${duration(age)} ago`,
      age !== null && age > STALE_AFTER_S ? 'old' : undefined),
    figure('Redis', redisUp ? 'up' : 'DOWN', redisUp ? undefined : 'bad'),
    figure('links up', `${up} of ${links.length}`, up < links.length ? 'bad' : undefined),
    figure('uptime', duration(s.clock - s.started))));
  return box;
}

function summarize(v) {
  const up = v.nodes.filter((n) => n.state === 'up' || n.state === 'warn').length;
  const linksUp = v.links.filter((l) => l.state === 'up').length;
  const digests = new Set();
  const clients = new Set();
  for (const { status } of page.statuses.values()) {
    if (status && status.digest) digests.add(status.digest);
    if (status) clients.add(status.clients);
  }
  const parts = [
    html('span', { class: up === v.nodes.length ? 'good' : 'bad' }, `${up} of ${v.nodes.length} nodes up`),
    ' · ',
    html('span', { class: linksUp === v.links.length ? 'good' : 'bad' }, `${linksUp} of ${v.links.length} links up`),
  ];
  if (up > 1) {
    const who = up === v.nodes.length ? 'all' : `the ${up} answering`;
    let agreement;
    if (digests.size === 1 && clients.size === 1) {
      agreement = html('span', { class: 'good' }, `${who} hold the same ${clientsOf([...clients][0])}`);
    } else if (digests.size > 1) {
      agreement = html('span', { class: 'bad' }, 'nodes hold different clients (catching up?)');
    } else {
      agreement = html('span', {}, 'agreement unknown (Redis down)');
    }
    parts.push(' · ', agreement);
  }
  $('summary').replaceChildren(...parts);
}

function render() {
  const v = view();
  drawGraph($('graph'), v);
  $('cards').replaceChildren(...v.nodes.map(({ name, state }) => card(name, state)));
  summarize(v);
  const mine = page.statuses.get(page.topology.node);
  if (mine && mine.status) $('version').textContent = `herd ${mine.status.version}`;
}

// --- client data (needs the admin token) -------------------------------------

function mapMessage(text) {
  const box = $('map-message');
  box.textContent = text || '';
  box.hidden = !text;
}

function tokenUi(hasToken) {
  $('token-form').hidden = hasToken;
  $('token-forget').hidden = !hasToken;
}

async function pollClients() {
  if (!page.topology.client_data) {
    $('token-form').hidden = true;
    $('token-forget').hidden = true;
    mapMessage('client data is off (no admin token configured)');
    $('map-caption').textContent = 'Set [herd] admin_token_env and that variable to see clients here.';
    return;
  }
  const token = sessionStorage.getItem(TOKEN_KEY);
  tokenUi(Boolean(token));
  if (!token) {
    page.map.clear();
    mapMessage(page.tokenRefused ? 'That token was refused. Enter the admin token.'
      : 'Enter the admin token to show the clients this node holds.');
    $('map-caption').textContent = 'Client ids and positions are personal data: they need the admin token.';
    return;
  }
  try {
    const data = await getJSON('/clients.json', { timeout: 5000, headers: { Authorization: `Bearer ${token}` } });
    page.map.show(data.points, data.total);
    mapMessage(data.total ? '' : 'This node holds no clients yet.');
    $('map-caption').textContent = data.shown < data.total
      ? `${clientsOf(data.total)}; a sample of ${count(data.shown)} drawn, grouped where they are close (numbers scaled to all clients).`
      : `${clientsOf(data.total)}, all drawn; those close together share one marker.`;
  } catch (err) {
    if (err.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      page.tokenRefused = true; // said until another token is entered or the page forgets it
      tokenUi(false);
      page.map.clear();
      mapMessage('That token was refused. Enter the admin token.');
    } else {
      mapMessage(`Client data unavailable: ${err.message}`);
    }
  }
}

function setUpToken() {
  $('token-form').addEventListener('submit', (event) => {
    event.preventDefault(); // never submitted: the token goes only into an Authorization header
    const input = $('token-input');
    const token = input.value.trim();
    input.value = '';
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    page.tokenRefused = false;
    pollClients();
  });
  $('token-forget').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    page.tokenRefused = false;
    pollClients();
  });
}

// --- the loop ------------------------------------------------------------------

function beat(ok) {
  const pulse = document.querySelector('.pulse');
  pulse.classList.remove('beat');
  void pulse.getBoundingClientRect(); // restart the animation
  pulse.classList.add('beat');
  $('live').classList.toggle('stale', !ok);
  $('live-text').textContent = ok ? `live · ${new Date().toLocaleTimeString('en-GB')}` : 'reconnecting…';
}

async function refresh() {
  if (!page.topology) {
    page.topology = await getJSON('/topology.json', { timeout: 5000 });
    $('this-node').textContent = page.topology.node;
    $('map-node').textContent = page.topology.node;
    document.title = `herd · ${page.topology.node}`;
  }
  await Promise.all([pollStatuses().then(render), pollClients()]);
}

async function loop() {
  const started = performance.now();
  let ok = true;
  try {
    await refresh();
  } catch (err) {
    ok = false;
    $('summary').textContent = `This node does not answer: ${err.message}`;
  }
  page.refreshes += 1;
  document.body.dataset.refreshes = String(page.refreshes);
  beat(ok);
  const every = page.topology ? page.topology.refresh * 1000 : 2000;
  setTimeout(loop, Math.max(0, every - (performance.now() - started)));
}

async function start() {
  page.map = new WorldMap($('map'));
  setUpToken();
  try {
    await page.map.load('/static/world.json');
  } catch (err) {
    mapMessage(`Map outlines unavailable: ${err.message}`);
  }
  loop();
}

start();
