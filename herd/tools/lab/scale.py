"""``herd lab scale``: what a herd costs as it grows, measured on lab hosts.

For each herd (random connected topologies of about degree 3, seeded, and a
line), one lab is built and measured in turn:

1. idle: bytes a second on peer links with no updates (heartbeats), and the
   CPU every node and Redis server uses meanwhile;
2. propagation: ``--rate`` updates a second for ``--duration`` seconds into
   one end of a longest shortest path, each seen arriving in the Redis of the
   other end (herd.tools.lab.load.Probe): p50/p99/max delay, and per update
   the flood messages (the nodes' ``herd_flood_messages``), duplicates, and
   bytes and packets on peer links (nft counters, idle rate subtracted);
3. memory: RSS of every node and redis-server after that;
4. a half/half partition under load for ``--partition`` seconds, healed:
   seconds until every node agrees, bytes meanwhile;
5. a node down ``--down`` seconds under load, started again: seconds from
   its start until it holds what the others hold.

Every update acknowledged in 4 and 5 is checked on every node at the end.
"""

from __future__ import annotations

import math
import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from herd.tools.lab import rules
from herd.tools.lab.chaos import growth, sync_bytes, verify, wait_agree
from herd.tools.lab.hosts import Lab
from herd.tools.lab.load import Ledger, Load, Probe
from herd.tools.lab.plan import Edge, LabError, describe_edges, diameter_ends

IDLE_SECONDS = 3.0
SETTLE = 1.0  # seconds after a phase's load before measuring the next
CONVERGE_TIMEOUT = 60.0
PROBE_PREFIX = "probe"  # client ids of the propagation probes (not in the ledger)


@dataclass
class Herd:
    """One herd to measure."""

    name: str
    hosts: int
    edges: list[Edge]
    seed: int | None = None


@dataclass
class Figures:
    name: str
    hosts: int
    links: int
    seed: int | None
    edges: str
    path: str  # origin -> target, hops
    start_s: float = 0.0  # build to every link up
    idle_bytes_per_s: float = 0.0
    idle_cores: float = 0.0  # CPU all nodes and Redis servers use with no updates
    probe_sent: int = 0
    probe_seen: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    flood_per_update: float = 0.0
    duplicates_per_update: float = 0.0
    wire_bytes_per_update: float = 0.0
    wire_packets_per_update: float = 0.0
    cpu_ms_per_update: float = 0.0  # all nodes and Redis servers, while the probe ran
    cpu_busy: float = 0.0  # cores they kept busy meanwhile (the machine has os.cpu_count())
    node_rss_mb: float = 0.0  # mean over nodes
    node_rss_max_mb: float = 0.0
    redis_rss_mb: float = 0.0
    partition: str = ""
    partition_acked: int = 0
    partition_converge_s: float | None = None
    partition_wire_bytes: int = 0
    partition_sync_bytes: int = 0
    down_host: str = ""
    down_acked: int = 0
    down_listen_s: float = 0.0
    down_catch_up_s: float | None = None
    down_sync_bytes: int = 0
    lost: int = 0
    bogus: int = 0
    loadavg: list[float] = field(default_factory=list)


def _sum_metric(lab: Lab, name: str) -> float:
    """A metric summed over every node (a node that cannot be read fails the run:
    a figure without it would be wrong)."""
    total = 0.0
    for host in lab.hosts:
        metrics = lab.metrics(host)
        if metrics is None:
            raise LabError(f"cannot read {host.name}'s /metrics")
        total += metrics.get(name, 0.0)
    return total


FLOOD_OUT = 'herd_flood_messages_total{direction="out"}'
FLOOD_DUP = 'herd_flood_messages_total{direction="duplicate"}'


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of sorted ``values``, nearest rank."""
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


def measure(lab: Lab, herd: Herd, rate: float, duration: float, partition_s: float,
            down_s: float, rng: random.Random, events: Callable[[str], None]) -> Figures:
    origin, target, hops = diameter_ends(herd.hosts, herd.edges)
    fig = Figures(herd.name, herd.hosts, len(herd.edges), herd.seed, describe_edges(herd.edges),
                  f"h{origin} -> h{target}, {hops} hops", start_s=round(lab.ready_seconds, 1),
                  loadavg=[round(x, 2) for x in os.getloadavg()])
    _idle(lab, fig)
    _propagation(lab, fig, lab.hosts[origin - 1], lab.hosts[target - 1], rate, duration, events)
    memory = [lab.memory_kb(h) for h in lab.hosts]
    fig.node_rss_mb = round(statistics.mean(n for n, _ in memory) / 1024, 1)
    fig.node_rss_max_mb = round(max(n for n, _ in memory) / 1024, 1)
    fig.redis_rss_mb = round(statistics.mean(r for _, r in memory) / 1024, 1)
    ledger = Ledger()
    _partition(lab, fig, ledger, rate, partition_s, rng, events)
    _down(lab, fig, ledger, rate, down_s, rng, events)
    losses, bogus = verify(lab, ledger, others=PROBE_PREFIX)
    fig.lost, fig.bogus = len(losses), len(bogus)
    fig.loadavg += [round(x, 2) for x in os.getloadavg()]
    return fig


def _idle(lab: Lab, fig: Figures) -> None:
    _, before = lab.wire_total()
    cpu, began = lab.cpu_total(), time.monotonic()
    time.sleep(IDLE_SECONDS)
    fig.idle_cores = round((lab.cpu_total() - cpu) / (time.monotonic() - began), 2)
    _, after = lab.wire_total()
    fig.idle_bytes_per_s = round((after - before) / IDLE_SECONDS)


def _propagation(lab: Lab, fig: Figures, origin: Any, target: Any, rate: float, duration: float,
                 events: Callable[[str], None]) -> None:
    flood0, dup0 = _sum_metric(lab, FLOOD_OUT), _sum_metric(lab, FLOOD_DUP)
    packets0, bytes0 = lab.wire_total()
    cpu0, began = lab.cpu_total(), time.monotonic()
    probe = Probe(origin, target, rate, duration, prefix=PROBE_PREFIX)
    delays = probe.run()
    time.sleep(SETTLE)  # the last updates reach every node, not only the target
    cpu, elapsed = lab.cpu_total() - cpu0, time.monotonic() - began
    packets1, bytes1 = lab.wire_total()
    sent = max(1, len(probe.sent_at))
    fig.probe_sent, fig.probe_seen = len(probe.sent_at), len(delays)
    if delays:
        fig.p50_ms = round(percentile(delays, 0.50) * 1000, 1)
        fig.p99_ms = round(percentile(delays, 0.99) * 1000, 1)
        fig.max_ms = round(delays[-1] * 1000, 1)
    fig.flood_per_update = round((_sum_metric(lab, FLOOD_OUT) - flood0) / sent, 2)
    fig.duplicates_per_update = round((_sum_metric(lab, FLOOD_DUP) - dup0) / sent, 2)
    fig.wire_bytes_per_update = round((bytes1 - bytes0 - fig.idle_bytes_per_s * elapsed) / sent)
    fig.wire_packets_per_update = round((packets1 - packets0) / sent, 1)
    fig.cpu_ms_per_update = round(cpu * 1000 / sent, 2)
    fig.cpu_busy = round(cpu / elapsed, 2)
    events(f"{fig.name}: propagation {fig.path}: p50 {fig.p50_ms} ms, p99 {fig.p99_ms} ms "
           f"({fig.probe_seen}/{fig.probe_sent} seen); {fig.flood_per_update} flood messages and "
           f"{fig.wire_bytes_per_update} bytes per update; {fig.cpu_ms_per_update} ms CPU per update "
           f"({fig.cpu_busy} cores busy)")


def _partition(lab: Lab, fig: Figures, ledger: Ledger, rate: float, hold: float, rng: random.Random,
               events: Callable[[str], None]) -> None:
    side = sorted(rng.sample(lab.hosts, len(lab.hosts) // 2), key=lambda h: h.index)
    rest = [h for h in lab.hosts if h not in side]
    fig.partition = f"{len(side)} | {len(rest)} hosts, {hold:g} s"
    acked0 = ledger.counts["acked"]
    load = Load(ledger, lambda: lab.hosts, rate, 500, rng.randrange(1 << 30), prefix="half").start()
    try:
        time.sleep(0.5)
        lab.apply(rules.partition(side, rest))
        time.sleep(hold)
    finally:
        load.stop()
    fig.partition_acked = ledger.counts["acked"] - acked0
    (_, wire0), sync0 = lab.wire_total(), sync_bytes(lab)
    healed = time.monotonic()
    lab.heal_network()
    seconds = wait_agree(lab, healed, CONVERGE_TIMEOUT)
    (_, wire1), sync1 = lab.wire_total(), sync_bytes(lab)
    fig.partition_converge_s = None if seconds is None else round(seconds, 3)
    fig.partition_wire_bytes, fig.partition_sync_bytes = wire1 - wire0, growth(sync0, sync1)
    events(f"{fig.name}: half/half partition healed: agree after {fig.partition_converge_s} s, "
           f"{fig.partition_wire_bytes} bytes on peer links ({fig.partition_sync_bytes} in SYNC answers)")


def _down(lab: Lab, fig: Figures, ledger: Ledger, rate: float, down: float, rng: random.Random,
          events: Callable[[str], None]) -> None:
    host = rng.choice(lab.hosts)
    fig.down_host = host.name
    lab.nodes[host].kill()
    acked0 = ledger.counts["acked"]
    others = [h for h in lab.hosts if h is not host]
    load = Load(ledger, lambda: others, rate, 500, rng.randrange(1 << 30), prefix="down").start()
    try:
        time.sleep(down)
    finally:
        load.stop()
    fig.down_acked = ledger.counts["acked"] - acked0
    sync0 = sync_bytes(lab)
    started = time.monotonic()
    lab.start_nodes([host])
    fig.down_listen_s = round(time.monotonic() - started, 3)
    seconds = wait_agree(lab, started, CONVERGE_TIMEOUT)
    fig.down_catch_up_s = None if seconds is None else round(seconds, 3)
    fig.down_sync_bytes = growth(sync0, sync_bytes(lab))
    events(f"{fig.name}: {host.name} down {down:g} s ({fig.down_acked} updates meanwhile), started again: "
           f"listening after {fig.down_listen_s} s, caught up after {fig.down_catch_up_s} s")


def as_row(fig: Figures) -> dict[str, Any]:
    return asdict(fig)
