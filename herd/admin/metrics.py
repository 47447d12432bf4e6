"""``/metrics``: the node's figures in the Prometheus text format (every
metric is listed in docs/ADMIN-HTTP.md).

prometheus_client (a well-kept library for the exposition format) renders
them; the values come from :class:`herd.stats.Stats` and the node's
components at scrape time, so the hot path only bumps integers. The library
is imported at the first scrape, not at start-up (SPEC: answer clients
within 0.5 s of starting).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

from herd.admin.view import RunningNode, client_connections, redis_up
from herd.stats import REDIS_BUCKETS
from herd.version import VERSION
from herd.wire.peer import VERSION as PEER_PROTOCOL
from storage.store import Summary

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class NodeCollector:
    """Prometheus collector reading a running node; ``held`` is the summary
    hash as read for the scrape under way (None: Redis could not be read)."""

    def __init__(self, running: RunningNode):
        self._running = running
        self.held: Summary | None = None

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        running = self._running
        stats = running.node.stats
        info = GaugeMetricFamily("herd_build_info", "The herd version and peer protocol this node runs",
                                 labels=["version", "protocol"])
        info.add_metric([VERSION, PEER_PROTOCOL.decode()], 1)
        yield info
        yield GaugeMetricFamily("herd_redis_full", "1 while the node's Redis refuses writes for lack of "
                                "memory (maxmemory reached, noeviction)", value=int(stats.redis_full))
        refused = CounterMetricFamily("herd_redis_refused", "Redis calls refused because Redis could "
                                      "not take writes, by reason (OOM, LOADING, MISCONF, ...)",
                                      labels=["reason"])
        for reason, count in sorted(stats.redis_refused.items()):
            refused.add_metric([reason], count)
        yield refused
        requests = CounterMetricFamily("herd_requests", "Client requests by command and outcome",
                                       labels=["command", "outcome"])
        for (command, outcome), count in sorted(stats.requests.items()):
            requests.add_metric([command, outcome], count)
        yield requests
        if self.held is not None:
            yield GaugeMetricFamily("herd_clients", "Clients held (the summary hash's count)",
                                    value=self.held.clients)
        yield GaugeMetricFamily("herd_client_connections", "Open client connections",
                                value=client_connections(running))
        yield GaugeMetricFamily("herd_redis_up", "1 when the node's Redis takes writes and answered",
                                value=int(redis_up(running, self.held)))
        # +Inf while no update is known (none stored yet, or not read back from
        # Redis yet after a restart): present from the first scrape (SPEC 9
        # lists it), and above any alert's threshold.
        age = max(0.0, time.time() - stats.last_update) if stats.last_update else math.inf
        yield GaugeMetricFamily("herd_last_update_age_seconds", "Seconds since the last update stored "
                                "(+Inf: none known)", value=age)
        yield from self._peers()
        yield from self._work()

    def _peers(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats, links = self._running.node.stats, self._running.links
        link_up = GaugeMetricFamily("herd_peer_link_up", "1 when a configured neighbour's link is up",
                                    labels=["peer"])
        for peer in sorted(links.neighbours):
            link_up.add_metric([peer.decode()], int(links.open_connections(peer) > 0))
        yield link_up
        yield GaugeMetricFamily("herd_peer_links_up", "Peers with an authenticated link",
                                value=len(links.up()))
        flood = CounterMetricFamily("herd_flood_messages", "Peer updates: in (new, stored), "
                                    "duplicate (not newer, not stored), out (sent)", labels=["direction"])
        flood.add_metric(["in"], stats.flood_in)
        flood.add_metric(["duplicate"], stats.flood_duplicate)
        flood.add_metric(["out"], links.flooded)
        yield flood

    def _work(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        node = self._running.node
        stats = node.stats
        yield CounterMetricFamily("herd_reconciliation_runs", "SYNC answers sent", value=node.reconciler.runs)
        yield CounterMetricFamily("herd_reconciliation_bytes", "Bytes sent in SYNC answers",
                                  value=node.reconciler.bytes_sent)
        yield CounterMetricFamily("herd_places_calls", "Places provider calls", value=stats.places_calls)
        yield CounterMetricFamily("herd_places_failures", "Failed places calls", value=stats.places_failures)
        yield CounterMetricFamily("herd_places_cache_hits", "Answers served from the places cache",
                                  value=getattr(node.places, "hits", 0))
        yield self._redis_histogram()

    def _redis_histogram(self) -> Any:
        from prometheus_client.core import HistogramMetricFamily

        stats = self._running.node.stats
        buckets, cumulative = [], 0
        for bound, count in zip((*map(str, REDIS_BUCKETS), "+Inf"), stats.redis_buckets, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        return HistogramMetricFamily("herd_redis_call_seconds", "Latency of Redis calls",
                                     buckets=buckets, sum_value=stats.redis_sum)


class Metrics:
    """The registry of one node's metrics and the process metrics, built at
    the first scrape."""

    def __init__(self, running: RunningNode):
        self._running = running
        self._registry: Any = None
        self._collector: NodeCollector | None = None

    def render(self, held: Summary | None) -> bytes:
        """The exposition text, with ``held`` as the summary hash's reading."""
        from prometheus_client import generate_latest

        if self._collector is None:
            from prometheus_client import CollectorRegistry, ProcessCollector

            self._registry = CollectorRegistry(auto_describe=False)
            self._collector = NodeCollector(self._running)
            self._registry.register(self._collector)
            ProcessCollector(registry=self._registry)
        self._collector.held = held
        return bytes(generate_latest(self._registry))
