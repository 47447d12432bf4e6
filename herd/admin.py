"""The optional admin HTTP endpoint of a node (``[nodes.X] admin = "host:port"``):
``/metrics`` in the Prometheus text format and ``/healthz``.

prometheus_client (a well-kept library for the exposition format) renders
the metrics; the values come from :class:`herd.stats.Stats` and the node's
components at scrape time, so the hot path only bumps integers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from twisted.web.resource import Resource
from twisted.web.server import Site

from config.schema import HerdConfig
from herd.node import Node
from herd.peer.links import PeerLinks
from herd.stats import REDIS_BUCKETS
from storage.store import RedisStore


class NodeService(Protocol):
    """What the admin endpoint reads of a running node (herd.service.NodeService)."""

    config: HerdConfig
    node: Node
    store: RedisStore
    links: PeerLinks
    listener: Any


class NodeCollector:
    """Prometheus collector reading a running node."""

    def __init__(self, service: NodeService):
        self._service = service

    def collect(self) -> Iterator[Any]:
        svc = self._service
        stats = svc.node.stats
        requests = CounterMetricFamily("herd_requests", "Client requests by command and outcome",
                                       labels=["command", "outcome"])
        for (command, outcome), count in sorted(stats.requests.items()):
            requests.add_metric([command, outcome], count)
        yield requests
        flood = CounterMetricFamily("herd_flood_messages", "Peer updates by direction",
                                    labels=["direction"])
        flood.add_metric(["in"], stats.flood_in)
        flood.add_metric(["out"], svc.links.flooded)
        flood.add_metric(["duplicate"], stats.flood_duplicate)
        yield flood
        yield GaugeMetricFamily("herd_peer_links_up", "Peers with an authenticated link",
                                value=len(svc.links.up()))
        yield CounterMetricFamily("herd_reconciliation_runs", "SYNC answers sent",
                                  value=svc.node.reconciler.runs)
        yield CounterMetricFamily("herd_reconciliation_bytes", "Bytes sent in SYNC answers",
                                  value=svc.node.reconciler.bytes_sent)
        yield CounterMetricFamily("herd_places_calls", "Places provider calls", value=stats.places_calls)
        yield CounterMetricFamily("herd_places_failures", "Failed places calls",
                                  value=stats.places_failures)
        yield CounterMetricFamily("herd_places_cache_hits", "Answers served from the places cache",
                                  value=getattr(svc.node.places, "hits", 0))
        yield self._redis_histogram()

    def _redis_histogram(self) -> HistogramMetricFamily:
        stats = self._service.node.stats
        buckets, running = [], 0
        for bound, count in zip((*map(str, REDIS_BUCKETS), "+Inf"), stats.redis_buckets, strict=True):
            running += count
            buckets.append((bound, running))
        return HistogramMetricFamily("herd_redis_call_seconds", "Latency of Redis calls",
                                     buckets=buckets, sum_value=stats.redis_sum)


class _Metrics(Resource):
    isLeaf = True

    def __init__(self, registry: CollectorRegistry):
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Any) -> bytes:  # noqa: N802 (twisted.web naming)
        request.setHeader(b"Content-Type", b"text/plain; version=0.0.4; charset=utf-8")
        return generate_latest(self._registry)


class _Health(Resource):
    isLeaf = True

    def __init__(self, service: NodeService):
        super().__init__()
        self._service = service

    def render_GET(self, request: Any) -> bytes:  # noqa: N802
        svc = self._service
        body = {"node": svc.node.name.decode(), "redis": svc.store.connected,
                "listening": bool(svc.listener.running),
                "links_up": [p.decode() for p in svc.links.up()]}
        ok = body["redis"] and body["listening"]
        request.setResponseCode(200 if ok else 503)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps({"ok": ok, **body}).encode()


def admin_site(service: NodeService) -> Site:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(service))  # type: ignore[arg-type]
    root = Resource()
    root.putChild(b"metrics", _Metrics(registry))
    root.putChild(b"healthz", _Health(service))
    from herd.web import mount_web  # the page's code loads only with an admin endpoint

    mount_web(root, service.config, service.node.name.decode(), service.store)
    site = Site(root)
    site.noisy = False
    return site
