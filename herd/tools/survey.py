"""What ``herd status`` and ``herd check`` see: every node's ``GET /status``
on its admin endpoint (SPEC sections 6 and 9), read over HTTP with treq.

No Redis and no secret: a node is seen only through what it says about
itself, from any host that reaches the admin addresses. All nodes are asked
at once, each with its own timeout, so one slow or dead node neither delays
the others past that timeout nor changes their rows. A node that does not
answer properly is UNREACHABLE with the reason, never guessed.

The pure part (:class:`NodeReport`, :func:`read_status`, :func:`agreement`,
:func:`is_ok`, :func:`document`) does no I/O; :class:`Surveyor` does the
fetching.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from treq.client import HTTPClient
from twisted.internet import error
from twisted.internet.defer import gatherResults, maybeDeferred, succeed
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool

from config.schema import HerdConfig, NodeConfig, host_port
from herd.http import BodyTooLarge, read_capped, treq_url

DEFAULT_TIMEOUT = 2.0  # seconds per node, connect to last byte
MAX_STATUS_BYTES = 1 << 20  # a /status is a few hundred bytes; more is not one

UP, NO_REDIS, UNREACHABLE = "up", "NO REDIS", "UNREACHABLE"



class StatusError(Exception):
    """A /status answer that cannot be used, in words for the operator."""


def status_url(node: NodeConfig) -> str | None:
    """Where ``node`` serves /status; None when its admin endpoint is off."""
    where = node.admin_reached_at()
    return None if where is None else f"http://{host_port(*where)}/status"


_OPTIONAL_TYPES: dict[str, tuple[type, ...]] = {
    "version": (str,), "clients": (int, type(None)), "digest": (str, type(None)),
    "last_update": (int, float, type(None)), "rate": (int, float), "links": (dict,),
}


def read_status(body: bytes, name: str) -> dict[str, Any]:
    """The /status document of node ``name`` from a response body. Raises
    StatusError when it is not JSON, not an object, is another node's, or a
    field this tool reads has the wrong type (``node``, ``clock`` and
    ``redis.state`` are required; the others may be missing; extra fields
    are kept)."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise StatusError(f"not JSON ({err})") from None
    if not isinstance(doc, dict):
        raise StatusError("not a JSON object")
    if doc.get("node") != name:
        raise StatusError(f"answered as node {doc.get('node')!r}, not {name!r}")
    if not _number(doc.get("clock")):
        raise StatusError("no clock (a number) in it")
    redis = doc.get("redis")
    if not isinstance(redis, dict) or not isinstance(redis.get("state"), str):
        raise StatusError("no redis.state in it")
    for key, types in _OPTIONAL_TYPES.items():
        if key in doc and (not isinstance(doc[key], types) or isinstance(doc[key], bool)):
            raise StatusError(f"{key} has the wrong type ({type(doc[key]).__name__})")
    return doc


def clock_skew(doc: dict[str, Any], sent: float, received: float) -> float:
    """The node's clock minus ours, both at the moment it read the request:
    its ``clock`` is taken when the request arrives, and ``held`` says how
    long it then waited (for Redis) before answering."""
    held: Any = doc.get("held")
    if not (_number(held) and 0 <= held <= received - sent):
        held = 0.0  # a node of an earlier version, or a figure that cannot be
    return float(doc["clock"]) - (sent + received - held) / 2


def _number(value: object) -> bool:
    """A finite JSON number (json.loads takes NaN and Infinity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class NodeReport:
    """One node as it reported itself: its /status document, or why there is
    none. ``skew``: its clock minus this machine's at the middle of the
    request (None when unreachable)."""

    name: str
    status: dict[str, Any] | None
    error: str | None = None
    skew: float | None = None

    @property
    def state(self) -> str:
        """UNREACHABLE (no usable /status), NO REDIS (it answers; its Redis
        is down) or up. Never derived from skew or staleness."""
        if self.status is None:
            return UNREACHABLE
        return UP if self.status["redis"]["state"] == "up" else NO_REDIS

    @property
    def digest(self) -> str | None:
        return self.status.get("digest") if self.status else None

    @property
    def clients(self) -> int | None:
        return self.status.get("clients") if self.status else None

    @property
    def version(self) -> str | None:
        return self.status.get("version") if self.status else None

    def link_mark(self, peer: str) -> str:
        """+ the node says its link to ``peer`` is up, - it says down, ? it
        did not say (unreachable, or ``peer`` is not in its links)."""
        link = (self.status or {}).get("links", {}).get(peer)
        if not isinstance(link, dict):
            return "?"
        return "+" if link.get("state") == "up" else "-"

    def update_age(self) -> float | None:
        """Seconds since its last stored update, by its own clock (so skew
        does not enter); None when unknown or never."""
        if self.status is None or not _number(self.status.get("last_update")):
            return None
        return float(self.status["clock"]) - float(self.status["last_update"])

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "error": self.error, "status": self.status, "skew": self.skew}


@dataclass(frozen=True)
class Agreement:
    """What the readable digests say. ``groups``: (clients, digest) -> node
    names, largest group first; ``unknown``: nodes with no readable digest."""

    groups: list[tuple[tuple[int | None, str], list[str]]]
    unknown: list[str]

    @property
    def agree(self) -> bool:
        """Every reachable node with a readable digest holds the same one
        (and the same client count); vacuously true when none is readable."""
        return len(self.groups) <= 1

    @property
    def verdict(self) -> bool | None:
        """Whether the herd agrees, never a guess: True when every node's
        digest was read and all are equal, False when two that were read
        differ, None (unknown) when a digest is missing and those read agree."""
        if not self.agree:
            return False
        return None if self.unknown or not self.groups else True

    def describe(self) -> str:
        """One line, e.g. "all 5 nodes hold the same 12 clients (digest ...)"."""
        if not self.groups:
            return "unknown (no node's digest could be read)"
        unknown = f"; unknown for {', '.join(self.unknown)}" if self.unknown else ""
        if self.agree:
            (clients, digest), names = self.groups[0]
            who = f"all {len(names)} nodes" if not self.unknown else \
                f"the {len(names)} node(s) with a readable digest"
            return f"{who} hold the same {_count(clients)} clients (digest {digest}){unknown}"
        held = "; ".join(f"{', '.join(names)}: {_count(clients)} clients (digest {digest})"
                         for (clients, digest), names in self.groups)
        return f"NODES DIFFER ({held}){unknown}"


def _count(clients: int | None) -> str:
    return "?" if clients is None else str(clients)


def agreement(reports: Sequence[NodeReport]) -> Agreement:
    """Group the nodes by (clients, digest); pure."""
    groups: dict[tuple[int | None, str], list[str]] = {}
    unknown = []
    for r in reports:
        if r.digest is None:
            unknown.append(r.name)
        else:
            groups.setdefault((r.clients, r.digest), []).append(r.name)
    ordered = sorted(groups.items(), key=lambda g: (-len(g[1]), g[1]))
    return Agreement(ordered, unknown)


def is_ok(reports: Sequence[NodeReport]) -> bool:
    """All well (exit 0): every node reachable with its Redis up and a
    digest, and all digests (and client counts) equal."""
    return all(r.state == UP and r.digest is not None for r in reports) and agreement(reports).agree


def problems(reports: Sequence[NodeReport]) -> list[str]:
    """What keeps :func:`is_ok` false, one phrase each, naming the nodes."""
    out = []
    unreachable = [r.name for r in reports if r.state == UNREACHABLE]
    no_redis = [r.name for r in reports if r.state == NO_REDIS]
    no_digest = [r.name for r in reports if r.state == UP and r.digest is None]
    if unreachable:
        out.append(f"unreachable: {', '.join(unreachable)}")
    if no_redis:
        out.append(f"Redis down: {', '.join(no_redis)}")
    if no_digest:
        out.append(f"no digest: {', '.join(no_digest)}")
    found = agreement(reports)
    if not found.agree:
        out.append("nodes differ: " + "; ".join(
            f"{', '.join(names)} {'hold' if len(names) > 1 else 'holds'} {_count(clients)} clients "
            f"(digest {digest})"
            for (clients, digest), names in found.groups))
    return out


def document(reports: Sequence[NodeReport], warnings: Sequence[str] = ()) -> dict[str, Any]:
    """The ``--json`` document of ``herd status`` and ``herd check``;
    ``warnings``: about the config (HerdConfig.warnings)."""
    return {"nodes": {r.name: r.to_json() for r in reports},
            "agree": agreement(reports).verdict, "ok": is_ok(reports), "warnings": list(warnings)}


class Surveyor:
    """Reads every node's /status, all at once, each within ``timeout`` s.

    ``persistent``: keep HTTP connections between surveys (the live view)."""

    def __init__(self, reactor: Any, config: HerdConfig, timeout: float = DEFAULT_TIMEOUT,
                 persistent: bool = False):
        self._reactor = reactor
        self._config = config
        self._timeout = timeout
        self._pool = HTTPConnectionPool(reactor, persistent=persistent)
        self._http = HTTPClient(Agent(reactor, pool=self._pool, connectTimeout=timeout))

    def survey(self) -> Any:
        """Deferred firing with a NodeReport per node, in name order, once
        every node answered or timed out; it never fails."""
        return gatherResults([self.report(name) for name in sorted(self._config.nodes)])

    def report(self, name: str) -> Any:
        """Deferred firing with node ``name``'s NodeReport within the timeout;
        it never fails."""
        node = self._config.nodes[name]
        url = status_url(node)
        if url is None:
            why = node.notes[0] if node.notes else 'admin endpoint off in the config (admin = "off")'
            return succeed(NodeReport(name, None, why))
        sent = self._reactor.seconds()
        d = maybeDeferred(self._fetch, url, name)  # a URL treq cannot send fails this row only
        d.addTimeout(self._timeout, self._reactor, _timed_out)
        d.addCallback(lambda doc: NodeReport(name, doc, None, clock_skew(doc, sent, self._reactor.seconds())))
        d.addErrback(lambda failure: NodeReport(name, None, f"{url}: {_reason(failure, self._timeout)}"))
        return d

    def _fetch(self, url: str, name: str) -> Any:
        """Deferred firing with the /status document at ``url``; cancelling it
        drops the connection."""
        def check(response: Any) -> Any:
            # The body is read whatever the code, so a kept connection is reusable.
            def use(body: bytes) -> dict[str, Any]:
                if response.code != 200:
                    raise StatusError(f"HTTP {response.code}")
                return read_status(body, name)

            return read_capped(response, MAX_STATUS_BYTES).addCallback(use)

        return self._http.get(treq_url(url)).addCallback(check)

    def close(self) -> Any:
        """Deferred firing once idle kept connections are closed."""
        return self._pool.closeCachedConnections()


class _TimedOut(Exception):
    pass


def _timed_out(result: object, timeout: float) -> Any:
    """addTimeout's translation: whatever the cancelled fetch ended with
    becomes the timeout."""
    return Failure(_TimedOut())


def _reason(failure: Any, timeout: float) -> str:
    """Why a node gave no usable /status, in a few words."""
    if failure.check(_TimedOut, error.TimeoutError):
        return f"no answer within {timeout:g} s"
    if failure.check(StatusError, BodyTooLarge):
        return str(failure.value)
    if failure.check(error.ConnectionRefusedError):
        return "connection refused"
    if failure.check(error.DNSLookupError):
        return "host name not found"
    reason = failure.getErrorMessage()
    wrapped = getattr(failure.value, "reasons", None)  # ResponseFailed and kin wrap the cause
    if wrapped:
        reason = "; ".join(f.getErrorMessage() for f in wrapped)
    return reason or type(failure.value).__name__
