"""The admin endpoint's web page (SPEC section 9): ``/`` and ``/static/*``
(the page, its ES modules, styles, map data and licences, all served from
this package: the page needs nothing from the internet), ``/topology.json``
(the herd as the config draws it) and ``/clients.json`` (a sample of this
node's clients, only for a request carrying the admin token).

The page polls ``/status`` of every node from the browser, so ``/status``
(herd.admin) and ``/topology.json`` (no client data in them) allow any
origin; ``/clients.json`` never does, and its token travels only in the
``Authorization`` header. herd.admin imports this module only when the admin
endpoint starts.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable
from importlib import resources
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from config.schema import HerdConfig, NodeConfig, host_port
from storage.store import PositionSample, RedisStore

log = Logger(namespace="herd")

MAX_POINTS = 2000  # client positions in one /clients.json answer
SAMPLE_MAX_AGE = 1.0  # seconds one Redis sample serves every viewer (the page polls every 2 s)
REFRESH_SECONDS = 2.0  # how often the page polls (told to it in /topology.json)
STATIC_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".json": b"application/json",
    ".svg": b"image/svg+xml",
    ".txt": b"text/plain; charset=utf-8",
}


def page_policy(config: HerdConfig) -> bytes:
    """The page's Content-Security-Policy: it fetches the herd's admin
    endpoints (each node's /status, as /topology.json gives them) and nothing
    else beyond this origin, and no form is ever submitted (the token stays
    out of URLs)."""
    endpoints = sorted({_csp_source(where) for node in config.nodes.values()
                        if (where := _browser_address(node)) is not None})
    connect = " ".join(["'self'", *endpoints])
    return (f"default-src 'self'; connect-src {connect}; img-src 'self' data:; style-src 'self'; "
            "script-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'").encode()


class WebPage(Resource):
    """GET (or HEAD) ``/``, ``/static/<file>``, ``/topology.json`` and
    ``/clients.json`` of node ``name``: the admin resource calls ``render``
    for each path this ``handles``; 405 for other methods. ``config`` gives
    the herd's config as it is now (a reload may change the topology); the
    admin token is read from the environment once, when this is made."""

    isLeaf = True

    def __init__(self, config: Callable[[], HerdConfig], name: str, store: RedisStore, clock: IReactorTime):
        super().__init__()
        at_start = config()
        token = at_start.admin_token()
        if token is None and at_start.admin_token_env is not None:
            log.warn("client data is off on the admin endpoint: environment variable {var} is not set "
                     "(or empty)", var=at_start.admin_token_env)
        files = _static_files()
        self._routes: dict[bytes, Resource] = {
            **{b"/static/" + file_name.encode(): _StaticFile(*file) for file_name, file in files.items()},
            b"/": _StaticFile(*files["index.html"], policy=lambda: page_policy(config())),
            b"/topology.json": _Topology(config, name, client_data=token is not None),
            b"/clients.json": _Clients(token, _Sampler(store, clock)),
        }

    def handles(self, path: bytes) -> bool:
        """Whether ``path`` (a request's path, without its query) is the page's."""
        return path in self._routes or path.startswith(b"/static/")

    def render(self, request: Any) -> Any:
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            return _error(request, 405, "only GET and HEAD")
        resource = self._routes.get(request.path)
        if resource is None:
            return _error(request, 404, "no such file")
        return resource.render(request)


def topology(config: HerdConfig, name: str, client_data: bool) -> dict[str, Any]:
    """The herd as node ``name``'s page draws it: its nodes (in config order)
    with the admin address a browser reaches (None when off), its links as
    sorted name pairs, which node this is, whether this node serves client
    data, and how often the page refreshes. No secrets, no client data."""
    return {
        "node": name,
        "nodes": [{"name": n, "admin": _browser_address(node)}
                  for n, node in config.nodes.items()],
        "links": [list(pair) for pair in config.links()],
        "client_data": client_data,
        "refresh": REFRESH_SECONDS,
    }


def _csp_source(where: str) -> str:
    """A CSP source for the admin endpoint at ``where`` (``host:port``): CSP
    hosts are letters, digits, hyphens and dots only, so an IPv6 address or a
    name with an underscore is any host on that port."""
    host, _, port = where.rpartition(":")
    return f"http://{where}" if re.fullmatch(r"[A-Za-z0-9.-]+", host) else f"http://*:{port}"


def _browser_address(node: NodeConfig) -> str | None:
    """``host:port`` of ``node``'s admin endpoint as a browser reaches it."""
    where = node.admin_reached_at()
    return None if where is None else host_port(*where)


def _static_files() -> dict[str, tuple[bytes, bytes]]:
    """Every file of herd/web/static with a known type: name -> (body, type)."""
    folder = resources.files("herd.web").joinpath("static")
    files = {}
    for item in folder.iterdir():
        suffix = "." + item.name.rpartition(".")[2]
        if item.is_file() and suffix in STATIC_TYPES:
            files[item.name] = (item.read_bytes(), STATIC_TYPES[suffix])
    return files


def _security_headers(request: Any) -> None:
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"Referrer-Policy", b"no-referrer")


class _StaticFile(Resource):
    """One file held in memory, revalidated by its ETag on every use (a node
    upgraded in place serves its new page at once)."""

    isLeaf = True

    def __init__(self, body: bytes, content_type: bytes, policy: Callable[[], bytes] | None = None):
        super().__init__()
        self._body = body
        self._type = content_type
        self._policy = policy
        self._etag = b'"' + hashlib.sha256(body).hexdigest()[:20].encode() + b'"'

    def render(self, request: Any) -> bytes:
        _security_headers(request)
        request.setHeader(b"Content-Type", self._type)
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"ETag", self._etag)
        if self._policy is not None:
            request.setHeader(b"Content-Security-Policy", self._policy())  # (the herd as it is now)
            request.setHeader(b"X-Frame-Options", b"DENY")
        if request.getHeader(b"If-None-Match") == self._etag:
            request.setResponseCode(304)
            return b""
        return self._body


class _Topology(Resource):
    """``/topology.json``: :func:`topology` of the config as it is now;
    readable by any origin (no client data, no secrets)."""

    isLeaf = True

    def __init__(self, config: Callable[[], HerdConfig], name: str, client_data: bool):
        super().__init__()
        self._config = config
        self._name = name
        self._client_data = client_data

    def render(self, request: Any) -> bytes:
        _security_headers(request)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"Access-Control-Allow-Origin", b"*")
        return json.dumps(topology(self._config(), self._name, self._client_data)).encode()


class _Sampler:
    """One Redis sample (storage/geo_sample.lua), encoded once, serves every
    request for SAMPLE_MAX_AGE seconds; requests meanwhile wait for the one
    call under way. However many viewers, Redis sees at most about one
    sample call a second."""

    def __init__(self, store: RedisStore, clock: IReactorTime):
        self._store = store
        self._clock = clock
        self._body: bytes | None = None
        self._taken = 0.0
        self._waiters: list[Deferred[bytes]] = []

    def body(self) -> Deferred[bytes]:
        """The JSON answer of /clients.json; fails like a store call."""
        if self._body is not None and self._clock.seconds() - self._taken < SAMPLE_MAX_AGE:
            return succeed(self._body)
        waiter: Deferred[bytes] = Deferred()
        self._waiters.append(waiter)
        if len(self._waiters) == 1:
            self._store.sample_positions(MAX_POINTS).addBoth(self._taken_now)
        return waiter

    def _taken_now(self, result: PositionSample | Failure) -> None:
        waiters, self._waiters = self._waiters, []
        if isinstance(result, Failure):
            for waiter in waiters:
                waiter.errback(result)
            return
        body = self._body = clients_json(result)
        self._taken = self._clock.seconds()
        for waiter in waiters:
            waiter.callback(body)


def clients_json(sample: PositionSample) -> bytes:
    """``{"total": N, "shown": M, "points": [[lat, lon, "client-id"], ...]}``
    (positions to 5 decimals, about a metre)."""
    points = [[round(lat, 5), round(lon, 5), cid.decode(errors="replace")] for cid, lat, lon in sample.points]
    return json.dumps({"total": sample.total, "shown": len(points), "points": points},
                      separators=(",", ":")).encode()


class _Clients(Resource):
    """``GET /clients.json``: a sample of this node's clients for a request
    whose ``Authorization: Bearer <token>`` holds the admin token; 401
    without it or with another, 404 when no token is configured, 503 when
    Redis does not answer. Never readable by other origins."""

    isLeaf = True

    def __init__(self, token: bytes | None, sampler: _Sampler):
        super().__init__()
        self._token = token
        self._sampler = sampler

    def render(self, request: Any) -> Any:
        _security_headers(request)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        if self._token is None:
            return _error(request, 404, "client data is off: no admin token configured "
                                        "([herd] admin_token_env names an unset or empty variable, or none)")
        if not self._authorized(request.getHeader(b"Authorization")):
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="herd admin"')
            return _error(request, 401, "the admin token is needed (Authorization: Bearer <token>)")
        finished: list[bool] = []
        request.notifyFinish().addBoth(finished.append)  # the browser may go away meanwhile
        d = self._sampler.body()
        d.addCallbacks(self._answer, self._failed, callbackArgs=(request, finished),
                       errbackArgs=(request, finished))
        return NOT_DONE_YET

    def _authorized(self, header: bytes | None) -> bool:
        scheme, _, given = (header or b"").partition(b" ")
        assert self._token is not None
        # compare_digest: the time taken does not tell how much of a guess was right.
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self._token)

    @staticmethod
    def _answer(body: bytes, request: Any, finished: list[bool]) -> None:
        if not finished:
            request.write(body)
            request.finish()

    @staticmethod
    def _failed(failure: Failure, request: Any, finished: list[bool]) -> None:
        if not finished:
            request.write(_error(request, 503, f"Redis did not answer: {failure.getErrorMessage()}"))
            request.finish()


def _error(request: Any, code: int, reason: str) -> bytes:
    """``{"error": reason}``, as JSON (Twisted would label it text/html)."""
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    _security_headers(request)
    return json.dumps({"error": reason}).encode()
