"""Typed, validated view of a herd TOML file.

Values here are already checked by :mod:`config.loader`; code that receives a
``HerdConfig`` never re-validates it.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

# A node name, and so an AT line's server field (herd.wire.client refuses others).
MAX_NODE_NAME_BYTES = 256
PEER_PORT_OFFSET = 10000  # default peer_port: port + this
ADMIN_PORT_OFFSET = 20000  # default admin port: port + this
ACCESS_LOG_MAX_BYTES = 64 << 20  # default size at which the access log is rotated
ACCESS_LOG_KEEP = 5  # default number of rotated access logs kept


class ConfigError(Exception):
    """A configuration problem, stated in one line that names file, node and key."""


@dataclass(frozen=True)
class RedisAddress:
    """Where a node's Redis lives, parsed from ``redis://[:password@]host[:port][/db]``
    (port 6379 when left out)."""

    url: str
    host: str
    port: int
    db: int = 0
    password: str | None = None


# Listening addresses that stand for every address of the host.
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
# Names of the loopback interface: a node on one listens there, not on every interface.
LOOPBACK_NAMES = {"localhost": "127.0.0.1", "ip6-localhost": "::1", "ip6-loopback": "::1"}


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address, or a name as listen_host reads it) is loopback."""
    try:
        return ipaddress.ip_address(listen_host(host)).is_loopback
    except ValueError:
        return False


def listen_host(host: str) -> str:
    """Where a node configured on ``host`` listens: its IP address, the
    loopback address of a loopback name (``localhost``, ``*.localhost``), or
    another host name as it is (which means every interface)."""
    name = host.lower()
    return LOOPBACK_NAMES.get(name, "127.0.0.1" if name.endswith(".localhost") else host)


def host_port(host: str, port: int) -> str:
    """``host:port`` as URLs, messages and the admin endpoint show it (an IPv6
    literal in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class NodeConfig:
    name: str
    host: str
    port: int
    redis: RedisAddress
    peers: tuple[str, ...] = ()
    prefix: str = "herd:"
    peer_port: int = 0  # where peers connect (loader default: port + 10000)
    admin: tuple[str, int] | None = None  # HTTP endpoint (loader default: host:port + 20000); None: off
    # What loading chose that the node says (a warning each) as it starts.
    notes: tuple[str, ...] = ()

    def admin_reached_at(self) -> tuple[str, int] | None:
        """Where others reach the admin endpoint: its address, with the node's
        host for a wildcard one (it listens on every address); None when off."""
        if self.admin is None:
            return None
        host, port = self.admin
        return (self.host if host in WILDCARD_HOSTS else host), port


@dataclass(frozen=True)
class PlacesConfig:
    provider: str = "offline"  # "offline" | "google" | "google-new"
    url: str | None = None  # None: the provider's public default
    key_env: str = "GOOGLE_PLACES_KEY"
    timeout: float = 5.0  # seconds per API call
    cache_ttl: int = 300  # seconds; 0 disables the answer cache (Google providers)
    min_population: int = 5000  # offline provider: smallest city in the data set

    def key(self) -> str:
        """The API key from the environment variable ``key_env``. Raises
        ConfigError (naming the variable, never the value) when it is unset,
        empty or blank."""
        value = os.environ.get(self.key_env, "")
        if not value.strip():
            raise ConfigError(f"places.key_env: environment variable {self.key_env} is not set, "
                              "or empty or blank")
        return value


@dataclass(frozen=True)
class TlsConfig:
    """PEM files for TLS on peer links; ``{node}`` in a path is the node's name."""

    cert: str
    key: str
    ca: str

    def for_node(self, node: str) -> TlsConfig:
        return TlsConfig(*(p.replace("{node}", node) for p in (self.cert, self.key, self.ca)))


@dataclass(frozen=True)
class HerdConfig:
    path: str
    nodes: dict[str, NodeConfig]
    places: PlacesConfig = field(default_factory=PlacesConfig)
    secret_env: str = "HERD_SECRET"
    previous_secret_env: str | None = None  # during a secret rotation: the env var of the old one
    max_line_bytes: int = 4096
    max_future_seconds: int = 3600  # client-time further ahead than this is invalid
    redis_timeout: float = 3.0  # seconds before a Redis call counts as failed
    max_connections: int = 10000  # open client connections per node (the peer port has its own limit)
    idle_timeout: float = 300.0  # seconds a client may stay silent; 0: forever
    max_outstanding: int = 1000  # unanswered requests per connection before reading pauses
    tls: TlsConfig | None = None  # TLS on peer links (both sides verified), off when None
    # The access log's path ({node}: the node's name); "" for the default (see
    # access_log_path), None when turned off ("off").
    access_log: str | None = ""
    access_log_max_bytes: int = ACCESS_LOG_MAX_BYTES
    access_log_keep: int = ACCESS_LOG_KEEP

    def access_log_path(self, name: str, environ: Mapping[str, str]) -> str | None:
        """Where node ``name`` writes its access log, or None when it is off.
        By default it is ``access.log`` in the node's state directory: the
        first of ``$STATE_DIRECTORY`` (systemd sets it for StateDirectory=;
        ``herd up`` sets it to ``<state>/<node>``), else ``state/<node>``
        under the working directory."""
        if self.access_log is None:
            return None
        if self.access_log:
            return self.access_log.replace("{node}", name)
        state = environ.get("STATE_DIRECTORY", "").split(":")[0]
        return os.path.join(state or os.path.join("state", name), "access.log")

    admin_token_env: str | None = None  # env var holding the admin token (client data); None: off

    def admin_token(self) -> bytes | None:
        """The admin token from the environment variable ``admin_token_env``
        without surrounding white space (a newline read from a file), or None
        (client data off) when no variable is named or it is unset, empty or
        blank. The value is never logged."""
        if self.admin_token_env is None:
            return None
        value = os.environ.get(self.admin_token_env, "").strip()
        if not (value.isascii() and value.isprintable()):  # (a browser sends nothing else in a header)
            raise ConfigError(f"${self.admin_token_env}: the admin token must be printable ASCII "
                              "(letters, digits, punctuation)")
        return value.encode() if value else None

    def neighbours(self, name: str) -> tuple[str, ...]:
        """Nodes linked to ``name``: links are undirected, so a node is linked to
        every node it lists and every node that lists it. Sorted by name."""
        linked = set(self.nodes[name].peers)
        linked.update(n for n, node in self.nodes.items() if name in node.peers)
        linked.discard(name)
        return tuple(sorted(linked))

    def links(self) -> list[tuple[str, str]]:
        """Every undirected link once, as sorted name pairs, sorted."""
        return sorted({tuple(sorted((a, b))) for a in self.nodes for b in self.neighbours(a)})  # type: ignore[misc]

    def parts(self) -> list[list[str]]:
        """The herd's connected parts by its links, each sorted, in name order:
        one part when every update can reach every node."""
        parts: list[list[str]] = []
        seen: set[str] = set()
        for start in sorted(self.nodes):
            if start in seen:
                continue
            part, todo = {start}, [start]
            while todo:
                for peer in self.neighbours(todo.pop()):
                    if peer not in part:
                        part.add(peer)
                        todo.append(peer)
            seen |= part
            parts.append(sorted(part))
        return parts

    def warnings(self) -> list[str]:
        """What nodes (at start and reload), ``herd check`` and ``herd status``
        warn about this config: links that leave the herd in parts no update
        crosses (a node removed from between two others, say)."""
        parts = self.parts()
        if len(parts) < 2:
            return []
        shown = " | ".join(", ".join(part) for part in parts)
        return [f"{self.path}: the links leave the herd in {len(parts)} parts that no update crosses "
                f"({shown}); link them (peers = [...])"]

    def secret(self) -> bytes:
        """The shared peer secret from the environment variable ``secret_env``.

        Raises ConfigError when it is unset or empty. The value is never logged.
        """
        value = os.environ.get(self.secret_env, "")
        if not value.strip():
            raise ConfigError(
                f"{self.path}: herd.secret_env: environment variable {self.secret_env} "
                "is not set, or empty or blank (it must hold the herd's shared secret)"
            )
        return value.encode()

    def secrets(self) -> tuple[bytes, ...]:
        """The secrets a node accepts peers with: the current one, then during a
        rotation the previous one (when ``previous_secret_env`` names a
        variable that is set). Raises ConfigError like :meth:`secret`."""
        current = self.secret()
        previous = os.environ.get(self.previous_secret_env or "", "").strip()
        if not previous or previous.encode() == current:
            return (current,)
        return current, os.environ[self.previous_secret_env or ""].encode()
