"""``herd status --config FILE [--once]``: a live view of the whole herd.

Reads what each node publishes in its own Redis every second
(``<prefix>status``) and the client summary its compare-and-set keeps
(``<prefix>summary``: count and digest), so a frame costs two Redis reads per
node however many clients there are. Nodes agree when their summaries are
equal; ``herd check`` compares record by record.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import DeferredList, inlineCallbacks

from config.schema import HerdConfig
from herd.tools.check import unreachable_here
from storage.store import RedisStore

STALE_AFTER = 3.0  # seconds without a status write before a node counts as down
REFRESH = 1.0
PROBE_TIMEOUT = 0.5  # seconds to connect to a node whose Redis cannot be read


@dataclass(frozen=True)
class NodeView:
    name: str
    address: str
    status: dict[bytes, bytes]
    summary: dict[bytes, bytes]
    error: str | None = None  # why its Redis could not be read
    listening: bool = False  # with an error: its node's port accepts connections
    remote: bool = False  # its Redis is another host's loopback: not read from here

    def up(self, now: float) -> bool:
        updated = float(self.status.get(b"updated", b"0"))
        return self.error is None and now - updated < STALE_AFTER

    def state(self, now: float) -> str:
        """up; NO REDIS (the node listens, its Redis cannot be read); DOWN;
        REMOTE (its Redis is on its own host's loopback: unknown from here)."""
        if self.remote:
            return "REMOTE"
        if self.error is not None and self.listening:
            return "NO REDIS"
        return "up" if self.up(now) else "DOWN"

    def peer_mark(self, peer: str, now: float) -> str:
        """+ linked, - not linked (or the node is down), ? unknown (Redis unread)."""
        if self.error is not None:
            return "?"
        return "+" if self.up(now) and peer in self.links_up else "-"

    def field(self, key: bytes, default: str = "-") -> str:
        value = self.status.get(key)
        return value.decode() if value else default

    @property
    def links_up(self) -> set[str]:
        raw = self.status.get(b"links_up", b"")
        return {p for p in raw.decode().split(",") if p}


def _age(stamp: str, now: float) -> str:
    try:
        value = float(stamp)
    except ValueError:
        return "-"
    return "never" if value == 0 else f"{now - value:.1f}s ago"


def render(config: HerdConfig, views: list[NodeView], now: float) -> str:
    """One frame of the view (pure: no I/O)."""
    lines = [f"herd status  {config.path}  {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(now))} UTC", ""]
    lines.append(f"{'NODE':<10} {'ADDRESS':<22} {'STATE':<8} {'CLIENTS':>8} {'REQ/S':>8} "
                 f"{'LAST UPDATE':>12}  PEERS")
    by_name = {v.name: v for v in views}
    for v in views:
        clients = v.summary.get(b"clients", b"0").decode() if v.error is None else "?"
        # A node that is down holds no links, whatever it published last.
        peers = " ".join(f"{p}{v.peer_mark(p, now)}" for p in config.neighbours(v.name))
        rate, last = v.field(b"rate", "0"), _age(v.field(b"last_update", "0"), now)
        state = v.state(now)
        lines.append(f"{v.name:<10} {v.address:<22} {state:<8} {clients:>8} {rate:>8} {last:>12}  {peers}")
        if v.error:
            lines.append(f"{'':<10} redis: {v.error}")
    lines.append("")
    lines.append("links: " + ", ".join(
        f"{a}-{b} {_link_state(by_name, a, b, now)}" for a, b in config.links()))
    lines.append(agreement(views, config.path))
    return "\n".join(lines)


def _link_state(views: dict[str, NodeView], a: str, b: str, now: float) -> str:
    """up when either end says so; ? when neither end's Redis could be read."""
    if any(views[x].up(now) and y in views[x].links_up for x, y in ((a, b), (b, a))):
        return "up"
    return "?" if views[a].error is not None and views[b].error is not None else "DOWN"


def agreement(views: list[NodeView], config_path: str) -> str:
    """From the summaries the nodes' compare-and-set keeps: records written
    into a Redis by hand are not in them (``herd check`` compares records)."""
    readable = [v for v in views if v.error is None]
    if len(readable) < len(views):
        return f"agreement: unknown ({len(views) - len(readable)} node(s) unreadable)"
    groups: dict[tuple[bytes, bytes], list[str]] = {}
    for v in readable:
        groups.setdefault((v.summary.get(b"clients", b"0"), v.summary.get(b"digest", b"")), []).append(v.name)
    if len(groups) == 1:
        (clients, digest), _ = groups.popitem()
        return f"agreement: all {len(views)} nodes hold the same {clients.decode()} clients " \
               f"(digest {digest.decode() or '-'})"
    held = "; ".join(f"{', '.join(names)}: {clients.decode()} clients (digest {digest.decode() or '-'})"
                     for (clients, digest), names in sorted(groups.items(), key=lambda g: -len(g[1])))
    return f"agreement: NODES DIFFER ({held}); herd check --config {config_path} lists the clients"


class HerdReader:
    """Keeps one Redis connection per node between frames."""

    def __init__(self, reactor: Any, config: HerdConfig):
        self._reactor = reactor
        self._config = config
        self._elsewhere = unreachable_here(config)  # read as unreadable, never connected to
        self._stores = {
            name: RedisStore(reactor, node.redis, node.prefix.encode(), min(config.redis_timeout, 2.0))
            for name, node in sorted(config.nodes.items()) if name not in self._elsewhere
        }
        for store in self._stores.values():
            store.start()

    def read(self) -> Any:
        """Deferred list of NodeView, one per node, in name order."""
        names = sorted(self._config.nodes)
        return DeferredList([self._read(name, self._stores.get(name)) for name in names]).addCallback(
            lambda results: [view for _, view in results])

    @inlineCallbacks
    def _read(self, name: str, store: RedisStore | None) -> Any:
        node = self._config.nodes[name]
        address = f"{node.host}:{node.port}"
        try:
            if store is None:
                return NodeView(name, address, {}, {}, self._elsewhere[name], remote=True)
            status = yield store.call("hgetall", store.keys.status)
            summary = yield store.call("hgetall", store.keys.summary)
        except Exception as err:
            listening = yield self._listening(node.host, node.port)
            return NodeView(name, address, {}, {}, str(err), listening)
        return NodeView(name, address, status or {}, summary or {})

    @inlineCallbacks
    def _listening(self, host: str, port: int) -> Any:
        """Whether something accepts connections at host:port (the node, its
        Redis aside); the connection is closed at once."""
        from twisted.internet.endpoints import HostnameEndpoint
        from twisted.internet.protocol import Factory, Protocol

        try:
            probe = yield HostnameEndpoint(self._reactor, host, port, timeout=PROBE_TIMEOUT).connect(
                Factory.forProtocol(Protocol))
        except Exception:
            return False
        probe.transport.loseConnection()
        return True

    def stop(self) -> Any:
        return DeferredList([s.stop() for s in self._stores.values()])


def run_status(config_path: str, once: bool) -> int:
    from twisted.internet.task import LoopingCall, react

    from config.loader import load_config

    config = load_config(config_path)

    def frame(reader: HerdReader, clear: bool) -> Any:
        def show(views: list[NodeView]) -> None:
            home = "\x1b[H\x1b[2J" if clear and sys.stdout.isatty() else ""  # not into a file or pipe
            print(home + render(config, views, time.time()), flush=True)
        return reader.read().addCallback(show)

    def main(reactor: Any) -> Any:
        reader = HerdReader(reactor, config)
        if once:
            return frame(reader, clear=False).addBoth(lambda r: (reader.stop(), r)[1])
        return LoopingCall(frame, reader, True).start(REFRESH)

    try:
        react(main)
    except SystemExit as done:
        return 0 if done.code in (0, None) else 1
    except KeyboardInterrupt:
        return 0
    return 0
