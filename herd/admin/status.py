"""The JSON documents of ``/status`` and ``/healthz`` (docs/ADMIN-HTTP.md):
figures about the node, never client data."""

from __future__ import annotations

import os
import time
from typing import Any

from herd.admin.view import Addresses, RunningNode, client_connections, redis_up
from herd.version import VERSION
from herd.wire.peer import VERSION as PEER_PROTOCOL
from storage.store import Summary


def status_document(running: RunningNode, addresses: Addresses) -> dict[str, Any]:
    """The ``/status`` document as of now, without what the summary hash says
    (:func:`with_summary` adds it once read): a request's figures are taken when
    it arrives, so a Redis slow to answer does not skew its clock."""
    node, links = running.node, running.links
    stats = node.stats
    return {
        "node": node.name.decode(),
        "name": node.name.decode(),  # SPEC 9's word for it; "node" came first and stays
        "version": VERSION,
        "protocol": PEER_PROTOCOL.decode(),
        "clock": time.time(),
        "started": stats.started,
        "pid": os.getpid(),
        "clients": None,
        "digest": None,
        "last_update": stats.last_update or None,
        "requests": stats.total_requests,
        "rate": stats.rate,
        "redis": {"state": None, "address": addresses.redis},
        "links": {
            peer.decode(): {"state": "up" if links.open_connections(peer) else "down",
                            "connections": links.open_connections(peer)}
            for peer in sorted(links.neighbours)
        },
        "listen": {"client": addresses.client, "peer": addresses.peer, "admin": addresses.admin},
        "flood": {"in": stats.flood_in, "duplicate": stats.flood_duplicate, "out": links.flooded},
        "syncs": node.reconciler.runs,
        "client_connections": client_connections(running),
    }


def with_summary(document: dict[str, Any], running: RunningNode, held: Summary | None) -> dict[str, Any]:
    """``document`` with the summary hash just read, or None when Redis could
    not be read (clients and digest are then null)."""
    if held is not None:
        document["clients"], document["digest"] = held.clients, held.digest.decode()
    document["redis"]["state"] = "up" if redis_up(running, held) else "down"
    document["held"] = round(max(0.0, time.time() - document["clock"]), 6)  # waiting for that read
    return document


def health(running: RunningNode) -> tuple[bool, dict[str, Any]]:
    """(healthy, the ``/healthz`` document): healthy when the node listens for
    clients and its Redis takes writes, judged without asking Redis."""
    listening = bool(running.listener.running)
    redis = running.store.connected and running.store.answering
    body = {"ok": listening and redis, "node": running.node.name.decode(), "listening": listening,
            "redis": redis, "links_up": [p.decode() for p in running.links.up()]}
    return listening and redis, body
