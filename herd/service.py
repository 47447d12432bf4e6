"""Wiring of one node, and nothing else: storage, places, peers, listening
endpoint and dialers composed into one Twisted service, plus ``herd serve``.

Start-up order serves the "answer within 0.5 s" target: the node listens
first, and Redis and peers connect in the background (requests that arrive
before Redis is reached wait for it, up to the Redis timeout).
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import os
import signal
import sys
import time
from dataclasses import fields, replace
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from config.schema import ConfigError, HerdConfig, PlacesConfig, host_port, listen_host
from herd import systemd
from herd.client_port import ClientConnectionFactory, Limits
from herd.clock import CLOCK_OFFSET_ENV, node_clock
from herd.logs import LogOptions, error_line
from herd.node import Node
from herd.peer.accepted import AcceptedPeerFactory
from herd.peer.dial import dial_service
from herd.peer.links import BEAT_INTERVAL, PeerLinks
from herd.peer.tls import tls_for
from herd.places.provider import PlacesProvider
from herd.stats import Stats
from storage.store import RedisStore

log = Logger(namespace="herd")
SHUTDOWN_GRACE = 5.0  # seconds in-flight replies get to finish on SIGTERM
STATUS_INTERVAL = 1.0  # seconds between writes of <prefix>status
LOG_MOVED_INTERVAL = 0.1  # seconds between K messages telling peers our log moved on
# A node whose Redis is unreachable tells systemd READY=1 anyway (it serves
# '? <line>' and reconnects by itself) this long after listening: three Redis
# timeouts, at most 10 s, well within the unit's TimeoutStartSec=30s, so that
# systemd never kills a node for its Redis.
READY_WITHOUT_REDIS_MAX = 10.0


LISTEN_BACKLOG = 1024  # bursts of connects queue in the kernel instead of timing out
class ListenFailed(Exception):
    """A configured port could not be opened; the message is one line naming
    what was to listen there, the address and the reason."""


class Listener(StreamServerEndpointService):
    """Listens as it starts, synchronously, and raises :class:`ListenFailed`
    when it cannot: a node that cannot open a configured port exits (SPEC
    section 7) instead of running on without it."""

    def __init__(self, endpoint: Any, factory: Any, what: str, address: str):
        super().__init__(endpoint, factory)
        self._raiseSynchronously = True
        self.what = what
        self.address = address

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as err:
            reason = getattr(err.socketError, "strerror", None) or err.socketError
            raise ListenFailed(f"cannot listen for {self.what} on {self.address}: {reason}") from None


def listen_description(host: str, port: int) -> str:
    """Endpoint string for a node's listening socket (config.schema.listen_host):
    the configured address when it is an IP literal or a name of loopback,
    every interface when it is another host name."""
    host = listen_host(host)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return f"tcp:{port}:backlog={LISTEN_BACKLOG}"
    if ip.version == 6:
        return f"tcp6:{port}:interface={host.replace(':', chr(92) + ':')}:backlog={LISTEN_BACKLOG}"
    return f"tcp:{port}:interface={host}:backlog={LISTEN_BACKLOG}"


def build_places(config: PlacesConfig, reactor: Any, store: RedisStore) -> PlacesProvider:
    if config.provider == "offline":
        from herd.places.offline import LoadInChild, OfflinePlaces

        return OfflinePlaces(store, reactor, config.min_population, config.timeout,
                             LoadInChild(reactor, max(store.timeout, 10.0)))
    from herd.places.google import make_provider

    provider = make_provider(config, reactor)
    if config.cache_ttl <= 0:
        return provider
    from herd.places.cache import CachedPlaces

    # Places API (New) is asked for exactly `limit` results, so the bound is
    # part of its question; the legacy API answers the same for any bound.
    return CachedPlaces(provider, store, config.cache_ttl, config.provider,
                        limit_in_key=config.provider == "google-new", clock=reactor)


class NodeService(MultiService):
    """One herd node as a service: start it to serve, stop it to shut down cleanly."""

    def __init__(self, config: HerdConfig, name: str, reactor: Any, secrets: tuple[bytes, ...],
                 activation: str | None = None):
        super().__init__()
        self._reactor = reactor
        me = config.nodes[name]
        self.address = (me.host, me.port)
        self._peer_port = me.peer_port
        self._redis_address = f"{me.redis.host}:{me.redis.port}"
        self._ready_without_redis = min(READY_WITHOUT_REDIS_MAX, 3 * config.redis_timeout)
        self._places_checked = 0  # the store connection the places were last checked on
        self._ready_anyway: Any = None  # READY=1 without Redis, once started
        self.store = RedisStore(reactor, me.redis, me.prefix.encode(), config.redis_timeout)
        clock_ns, offset_ns = node_clock(os.environ)
        if offset_ns:
            log.warn("clock offset {s:+.9f} s in effect (${env}: for labs and tests only)",
                     s=offset_ns / 1e9, env=CLOCK_OFFSET_ENV)
        self.links = PeerLinks(n.encode() for n in config.neighbours(name))
        try:
            places = build_places(config.places, reactor, self.store)
        except ConfigError as err:  # the provider names the key; say which file
            raise ConfigError(f"{config.path}: {err}") from None
        self.node = Node(name.encode(), self.store, places, self.links, reactor, Stats(),
                         max_future_ns=config.max_future_seconds * 1_000_000_000, clock_ns=clock_ns)
        self.store.observe = self.node.stats.observe_redis
        self.store.on_refused = self.node.stats.refused_by_redis
        self.store.on_connected.append(self.node.stats.redis_serves)
        peer_tls = tls_for(config, name)
        self.factory = ClientConnectionFactory(
            self.node, config.max_line_bytes, config.max_future_seconds * 1_000_000_000, clock_ns,
            Limits(config.max_connections, config.idle_timeout, config.max_outstanding))
        # The peer port first: once the client port answers, peers can dial in
        # too (a test harness waits for the client port; a process descheduled
        # between the two listens refused a peer that connected at once).
        self.peer_factory = AcceptedPeerFactory(self.node, name.encode(), secrets, peer_tls,
                                                config.max_line_bytes)
        self._listen(listen_description(me.host, me.peer_port), self.peer_factory, "peers",
                     host_port(me.host, me.peer_port))
        # A socket passed by systemd (socket activation) replaces host:port.
        description = activation or listen_description(me.host, me.port)
        self.listener = self._listen(description, self.factory, "clients", host_port(me.host, me.port))
        self._config, self._secrets, self._peer_tls = config, secrets, peer_tls
        self._dialers: dict[str, tuple[tuple[str, int], Any]] = {}  # peer -> (its address, its dialler)
        self._dial(config)
        for note in (*me.notes, *config.warnings()):
            log.warn("{note}", note=note)
        if me.admin is not None:
            from herd.admin import Addresses, admin_site

            addresses = Addresses(host_port(me.host, me.port), host_port(me.host, me.peer_port),
                                  host_port(*me.admin), host_port(me.redis.host, me.redis.port))
            self._listen(listen_description(*me.admin), admin_site(self, addresses, reactor),
                         "the admin endpoint", addresses.admin)
        self._status = LoopingCall(self._publish_status)
        self._watchdog = LoopingCall(systemd.notify, "WATCHDOG=1")
        self._log_moved = LoopingCall(self.links.send_log_moved)
        self._heartbeat = LoopingCall(lambda: self.links.beat(self.node.paused_peers))

    def _dial(self, config: HerdConfig) -> None:
        """Keep a dialler for each neighbour in ``config`` at its current
        address: stop those of dropped or moved neighbours, start new ones."""
        name = self.node.name.decode()
        wanted = {peer: (config.nodes[peer].host, config.nodes[peer].peer_port)
                  for peer in config.neighbours(name)}
        for peer, (address, dialler) in list(self._dialers.items()):
            if wanted.get(peer) != address:
                del self._dialers[peer]
                dialler.disownServiceParent()
        for peer, (host, port) in wanted.items():
            if peer not in self._dialers:
                tls = self._peer_tls.client(host) if self._peer_tls else None
                dialler = dial_service(self._reactor, self.node, name.encode(), peer.encode(), host, port,
                                       self._secrets, tls)
                dialler.setServiceParent(self)
                self._dialers[peer] = ((host, port), dialler)

    def reload(self, config: HerdConfig) -> None:
        """Apply a re-read config (SIGHUP, ``systemctl reload``): the peers of
        this node and their addresses change at once; anything else of this
        node's, and every ``[herd]`` and ``[places]`` setting, needs a restart:
        each change is logged, and the node goes on with what it runs (so a
        later reload compares with that, not with what it did not apply)."""
        name = self.node.name.decode()
        if name not in config.nodes:
            log.error("reload: {path} has no node {name}; nothing changed", path=config.path, name=name)
            return
        before, after = self._config.nodes[name], config.nodes[name]
        needs_restart = [f"{key} of node {name}" for key in _NODE_KEYS
                         if getattr(before, key) != getattr(after, key)]
        needs_restart += [_herd_key(key) for key in _HERD_KEYS
                          if getattr(self._config, key) != getattr(config, key)]
        if needs_restart:
            log.warn("reload: {keys} changed; that takes a restart (the node runs on with what it has)",
                     keys=", ".join(needs_restart))
        config = replace(config, nodes={**config.nodes, name: replace(before, peers=after.peers)},
                         **{key: getattr(self._config, key) for key in _HERD_KEYS})
        old = set(self._config.neighbours(name))
        self.links.set_neighbours(peer.encode() for peer in config.neighbours(name))
        self._config = config
        self._dial(config)
        new = set(config.neighbours(name))
        log.info("reload: peers now {peers} (added: {added}; removed: {removed})",
                 peers=", ".join(sorted(new)) or "none", added=", ".join(sorted(new - old)) or "none",
                 removed=", ".join(sorted(old - new)) or "none")
        for warning in config.warnings():
            log.warn("reload: {warning}", warning=warning)

    @property
    def config(self) -> HerdConfig:
        """The herd's config as this node runs it now (``reload`` replaces it)."""
        return self._config

    def _listen(self, description: str, factory: Any, what: str, address: str) -> Listener:
        """Listen at ``description`` for ``what`` when the service starts; a
        port that cannot be opened raises ListenFailed from startService."""
        listener = Listener(serverFromString(self._reactor, description), factory, what, address)
        listener.setServiceParent(self)
        return listener

    def startService(self) -> None:
        super().startService()  # listens at once; raises ListenFailed
        self.store.on_connected.append(self._redis_reached)
        self.store.on_connected.append(self._recall_last_update)
        self._ready_anyway = self._reactor.callLater(self._ready_without_redis, self._redis_not_reached)
        self.store.start()
        self.node.load_latest()
        if hasattr(self.node.places, "recheck"):  # offline places: load them once Redis serves
            self.store.on_connected.append(self._check_places)
        self._status.start(STATUS_INTERVAL, now=False)
        self._log_moved.start(LOG_MOVED_INTERVAL, now=False)
        self._heartbeat.start(BEAT_INTERVAL, now=False)
        interval = systemd.watchdog_interval()
        if interval:
            self._watchdog.start(interval)
        log.info("node {name} listening on {host}:{port} for clients and {host}:{peer_port} for peers",
                 name=self.node.name.decode(), host=self.address[0], port=self.address[1],
                 peer_port=self._peer_port)

    def _check_places(self) -> None:
        """On every new connection (not after each recovered timeout): Redis may
        have been emptied or replaced."""
        if self.store.connections_made == self._places_checked:
            return
        self._places_checked = self.store.connections_made
        self.node.places.recheck().addErrback(lambda _: None)  # type: ignore[attr-defined]
        # (a failure is logged by the provider; a WHATSAT tries again)

    def _redis_reached(self) -> None:
        """Ready once listening and Redis answered (the event log says so, and
        systemd is told under Type=notify)."""
        if self._ready_anyway.active():
            self._ready_anyway.cancel()
        told = systemd.notify(f"READY=1\nSTATUS=serving on {self.address[0]}:{self.address[1]}")
        log.info("ready: serving clients on {host}:{port}, Redis answers{told}", host=self.address[0],
                 port=self.address[1], told="; told systemd READY=1" if told else "")
        self.store.on_connected.remove(self._redis_reached)

    def _redis_not_reached(self) -> None:
        status = (f"listening on {self.address[0]}:{self.address[1]}; Redis at {self._redis_address} "
                  "not reached yet (answering '? <line>')")
        told = systemd.notify(f"READY=1\nSTATUS={status}")
        log.warn("ready without Redis after {s:g} s{told}: {status}", s=self._ready_without_redis,
                 told="; told systemd READY=1" if told else "", status=status)

    def _recall_last_update(self) -> None:
        """Once Redis serves: the last update time an earlier run published in
        ``<prefix>status``, so that its age survives a restart."""
        d = self.store.call("hget", self.store.keys.status, b"last_update")
        d.addCallbacks(self._recalled, lambda _: None)  # failed: tried again on the next connection

    def _recalled(self, value: bytes | None) -> None:
        if self._recall_last_update in self.store.on_connected:
            self.store.on_connected.remove(self._recall_last_update)
        with contextlib.suppress(TypeError, ValueError):  # none, or not a number: never mind
            self.node.stats.recall_last_update(float(value))  # type: ignore[arg-type]

    def _publish_status(self) -> None:
        """Write this node's live figures to ``<prefix>status``, for ``redis-cli``
        (``herd status`` reads ``/status``); and check that Redis still holds
        the update log this node wrote (RedisStore.check_log)."""
        self.store.check_log()
        stats = self.node.stats
        stats.tick(STATUS_INTERVAL)
        fields = {
            b"rate": f"{stats.rate:.1f}",
            b"node": self.node.name, b"pid": os.getpid(), b"started": f"{stats.started:.3f}",
            b"updated": f"{time.time():.3f}", b"requests": stats.total_requests,
            b"links_up": b",".join(self.links.up()), b"neighbours": b",".join(sorted(self.links.neighbours)),
            b"flood_in": stats.flood_in, b"flood_duplicate": stats.flood_duplicate,
            b"flood_out": self.links.flooded,
            b"syncs": self.node.reconciler.runs,
        }
        if stats.last_update:  # else Redis keeps the last one of an earlier run
            fields[b"last_update"] = f"{stats.last_update:.3f}"
        args = [x for pair in fields.items() for x in pair]
        self.store.call("execute_command", "HSET", self.store.keys.status, *args).addErrback(lambda _: None)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """Stop listening and dialling, let in-flight replies finish (bounded),
        then close peer links and Redis."""
        log.info("stopping: no new connections; finishing in-flight replies")
        systemd.notify("STOPPING=1")
        for loop in (self._status, self._watchdog, self._log_moved, self._heartbeat):
            if loop.running:
                loop.stop()
        if self._ready_anyway is not None and self._ready_anyway.active():
            self._ready_anyway.cancel()
        yield super().stopService()
        clients = list(self.factory.connections)
        for conn in clients:
            conn.close_when_idle()
        closed = defer.gatherResults([c.closed for c in clients])
        yield closed.addTimeout(SHUTDOWN_GRACE, self._reactor).addErrback(lambda _: None)
        self.links.close_all()
        yield self.store.stop()  # (what still waited for Redis fails: counted, then summed up below)
        self.node.close_logs()
        log.info("stopped")


# What a reload cannot change in a running node: its own addresses and Redis,
# and the herd-wide settings (read once, at start).
_NODE_KEYS = ("host", "port", "peer_port", "redis", "prefix", "admin")
_HERD_KEYS = tuple(f.name for f in fields(HerdConfig) if f.name not in ("path", "nodes"))


def _herd_key(key: str) -> str:
    """How a HerdConfig field is named in the file."""
    return "[places]" if key == "places" else "[herd] tls_*" if key == "tls" else f"[herd] {key}"


def _reload(service: NodeService, config_path: str) -> None:
    """SIGHUP: read the config again and apply what can change while running."""
    from config.loader import load_config

    log.info("reload: reading {path}", path=config_path)
    try:
        config = load_config(config_path, need_secret=True)
    except ConfigError as err:
        log.error("reload failed, nothing changed: {why}", why=str(err))
        return
    service.reload(config)


def _note_more_stop_signals(reactor: Any) -> None:
    """Once stopping, SIGTERM or SIGINT again (a second Ctrl-C) is noted in
    the log, not an error (Twisted's own handler would stop the stopped
    reactor again: a critical line). The stop under way finishes within
    SHUTDOWN_GRACE; SIGKILL cuts it short."""
    def noted(signum: int, frame: Any) -> None:
        reactor.callFromThread(log.info, "{signal} again: already stopping",
                               signal=signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, noted)
    signal.signal(signal.SIGINT, noted)


def raise_file_limit(wanted: int) -> None:
    """Lift the soft open-files limit towards ``wanted`` (within the hard limit),
    so max_connections is reachable without operator tuning."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def serve(name: str, config_path: str, logging: LogOptions, activation: str | None = None) -> int:
    """``herd serve NAME --config FILE``: run one node until SIGTERM/SIGINT."""
    # Twisted handles SIGINT only when Python's default handler is in place; a
    # node started in the background by a shell inherits SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from config.loader import check_can_serve, load_config

    config = load_config(config_path, need_secret=True)
    if name not in config.nodes:
        raise ConfigError(f"{config_path}: nodes.{name}: no such node "
                          f"(known: {', '.join(sorted(config.nodes))})")
    check_can_serve(config, name)
    from twisted.internet import reactor  # herd.reactor's, installed by the CLI

    from herd.logs import open_access_log, start_logging

    access = open_access_log(config, name, os.environ)
    events = start_logging(name, reactor, logging, access)
    from herd.version import VERSION
    from herd.wire.peer import VERSION as PEER_PROTOCOL

    # SPEC 6: the node's first log line carries the version (at any --log-level).
    log.info("herd {version} node {name} starting (peer protocol {protocol}, config {config})",
             version=VERSION, name=name, protocol=PEER_PROTOCOL.decode(), config=config_path, start_line=True)
    log.info("access log: {path}", path=os.path.abspath(access.path) if access else "off")
    raise_file_limit(config.max_connections + 256)
    service = NodeService(config, name, reactor, config.secrets(), activation)
    try:
        service.startService()
    except ListenFailed as err:
        # The event log too (its level, its format): the reactor that would
        # have written its buffer never runs.
        log.error("{why}; exiting", why=str(err))
        events.flush()
        if not systemd.is_journal(sys.stderr):  # (there, once is enough)
            error_line(f"herd: {name}: {err}", logging.fmt == "json", name, prefix=logging.prefix)
        return 1
    # Written now, not at the reactor's first flush: a stop signal before the
    # reactor runs (it installs the handlers) ends the process at once.
    events.flush()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.addSystemEventTrigger("before", "shutdown", _note_more_stop_signals, reactor)
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(  # type: ignore[attr-defined]
        _reload, service, config_path))
    # Start-up leaves tens of thousands of long-lived objects (modules,
    # classes); move them out of the collector's sight (at once, without a
    # collection first), or its full collections stall the node for up to
    # about 0.1 s while updates wait.
    gc.freeze()
    gc.enable()
    reactor.run()  # type: ignore[attr-defined]
    # The reactor put back the default handlers as it stopped: a stop signal
    # during the interpreter's exit would kill the process (-15, not 0).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return 0
