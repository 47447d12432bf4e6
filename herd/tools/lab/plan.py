"""What a lab is made of, as plain values (no I/O): the names of its
namespaces and interfaces, each host's address, the topology of its herd and
the one config file every host shares.

Every name the lab gives the kernel starts with ``PREFIX``, so a later run
(or ``herd lab clean``) finds and removes whatever an earlier one left.
Private addresses (``SUBNET``) exist only inside the lab's own namespaces.
"""

from __future__ import annotations

import json
import random
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PREFIX = "herdlab-"
NET_NS = PREFIX + "net"  # holds the bridge: the lab's "switch"
OPS_NS = PREFIX + "ops"  # the observer: load, herd status, herd check
BRIDGE = PREFIX + "br"
SUBNET = "10.77.0"
OPS_INDEX = 254  # the observer's address: 10.77.0.254
MAX_HOSTS = 200

CLIENT_PORT = 10000  # every node: the same ports on its own address
PEER_PORT = CLIENT_PORT + 10000  # config default (port + 10000)
ADMIN_PORT = CLIENT_PORT + 20000  # config default (<host>:<port + 20000>)
REDIS_PORT = 6400  # every host's Redis, on its own loopback

SECRET_ENV = "HERD_SECRET"
PLACES_KEY_ENV = "HERD_LAB_PLACES_KEY"

Edge = tuple[int, int]  # host indexes, lower first


class LabError(Exception):
    """The lab could not be built or run (a one-line reason)."""


@dataclass(frozen=True)
class Host:
    """Host ``index`` (1..MAX_HOSTS): node ``h<index>`` at ``10.77.0.<index>``."""

    index: int

    @property
    def name(self) -> str:
        return f"h{self.index}"

    @property
    def netns(self) -> str:
        return f"{PREFIX}h{self.index}"

    @property
    def address(self) -> str:
        return f"{SUBNET}.{self.index}"

    @property
    def veth(self) -> str:
        """The host's end of its cable (inside the host's namespace)."""
        return f"{PREFIX}v{self.index}"

    @property
    def bridge_port(self) -> str:
        """The switch's end of the cable (inside NET_NS, on the bridge)."""
        return f"{PREFIX}b{self.index}"


def hosts(count: int) -> list[Host]:
    if not 1 <= count <= MAX_HOSTS:
        raise LabError(f"--hosts must be within 1..{MAX_HOSTS}")
    return [Host(i) for i in range(1, count + 1)]


# -- topologies ----------------------------------------------------------------


def line_topology(count: int) -> list[Edge]:
    """1-2-3-...-count."""
    return [(i, i + 1) for i in range(1, count)]


def random_topology(count: int, degree: float, seed: int) -> list[Edge]:
    """A connected random graph on hosts 1..count with about ``degree`` links
    per host (count * degree / 2 links, at most every pair), the same for the
    same seed. A random spanning tree first (each host joins a random earlier
    one of the least degree), then links between the least-linked hosts until
    the count is reached, so degrees stay close to ``degree``."""
    rng = random.Random(seed)
    order = list(range(1, count + 1))
    rng.shuffle(order)
    links: set[Edge] = set()
    degrees = dict.fromkeys(order, 0)

    def link(a: int, b: int) -> None:
        links.add((min(a, b), max(a, b)))
        degrees[a] += 1
        degrees[b] += 1

    for i, host in enumerate(order[1:], start=1):
        earlier = order[:i]
        least = min(degrees[h] for h in earlier)
        link(host, rng.choice([h for h in earlier if degrees[h] == least]))
    wanted = min(round(count * degree / 2), count * (count - 1) // 2)
    while len(links) < wanted:
        candidates = [(a, b) for a in order for b in order
                      if a < b and (a, b) not in links]
        least = min(degrees[a] + degrees[b] for a, b in candidates)
        link(*rng.choice([(a, b) for a, b in candidates if degrees[a] + degrees[b] == least]))
    return sorted(links)


def neighbours(edges: Iterable[Edge]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for a, b in edges:
        out.setdefault(a, []).append(b)
        out.setdefault(b, []).append(a)
    return {h: sorted(peers) for h, peers in out.items()}


def distances(edges: Iterable[Edge], source: int) -> dict[int, int]:
    """Hops from ``source`` to every host it reaches (breadth first)."""
    links = neighbours(edges)
    seen = {source: 0}
    queue = deque([source])
    while queue:
        here = queue.popleft()
        for there in links.get(here, []):
            if there not in seen:
                seen[there] = seen[here] + 1
                queue.append(there)
    return seen


def diameter_ends(count: int, edges: Sequence[Edge]) -> tuple[int, int, int]:
    """(a, b, hops): two hosts as far apart as any, lowest indexes first."""
    best = (1, 1, 0)
    for a in range(1, count + 1):
        for b, hops in sorted(distances(edges, a).items()):
            if hops > best[2]:
                best = (a, b, hops)
    return best


def describe_edges(edges: Iterable[Edge]) -> str:
    return " ".join(f"h{a}-h{b}" for a, b in edges)


# -- the config ----------------------------------------------------------------


def render_config(lab_hosts: Sequence[Host], edges: Iterable[Edge]) -> str:
    """The herd file every host uses: each node on its own address with the
    default peer and admin ports, each with its Redis on its own loopback,
    each link listed by both ends. The places provider is never asked (the
    lab sends no WHATSAT); a Google provider pointed at a closed loopback port
    keeps nodes from loading a places data set into 25 Redis servers."""
    peers = neighbours(edges)
    out = [f"# herd lab: {len(lab_hosts)} hosts, one config for all of them (docs/LAB.md)\n",
           f'[herd]\nsecret_env = "{SECRET_ENV}"\n',
           f'[places]\nprovider = "google"\nurl = "http://127.0.0.1:9/nearbysearch/json"\n'
           f'key_env = "{PLACES_KEY_ENV}"\n']
    for host in lab_hosts:
        names = [f"h{p}" for p in peers.get(host.index, [])]
        out.append(f'[nodes.{host.name}]\nhost = "{host.address}"\nport = {CLIENT_PORT}\n'
                   f'redis = "redis://127.0.0.1:{REDIS_PORT}/0"\npeers = {json.dumps(names)}\n')
    return "\n".join(out)
