"""The admin HTTP endpoint's one resource: GET/HEAD on ``/healthz``,
``/metrics``, ``/status`` and the web page's paths (herd.web); 404 for any
other path, 405 for any other method (docs/ADMIN-HTTP.md)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from herd.admin.metrics import CONTENT_TYPE as METRICS_TYPE
from herd.admin.metrics import Metrics
from herd.admin.status import health, status_document, with_summary
from herd.admin.view import Addresses, RunningNode, SummaryReader
from storage.store import Summary

if TYPE_CHECKING:
    from herd.web import WebPage

log = Logger(namespace="herd")
JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"

# What an answer that needs the summary hash makes of it: (content type, body).
Produce = Callable[[Summary | None], tuple[bytes, bytes]]

# Connections the admin endpoint holds at once; more are closed at once. Many
# slow ones (a byte now and then, so no idle timeout ends them) took every
# file the node may open, and its clients were refused.
MAX_CONNECTIONS = 64
MAX_PER_ADDRESS = 16  # of them from one address: one host cannot take them all
IDLE_TIMEOUT = 15.0  # seconds without a byte before a connection is closed


class AdminResource(Resource):
    """Every path of the admin endpoint, dispatched on the exact path."""

    isLeaf = True

    def __init__(self, running: RunningNode, addresses: Addresses, reactor: IReactorTime,
                 web: WebPage | None = None):
        super().__init__()
        self._web = web  # herd.web.WebPage: answers the paths it handles
        self._running = running
        self._addresses = addresses
        self._summary = SummaryReader(running.store, reactor)
        self._metrics = Metrics(running)
        self._paths: dict[bytes, Callable[[Any], bytes | int]] = {
            b"/healthz": self.healthz, b"/metrics": self.metrics, b"/status": self.status,
        }

    def render(self, request: Any) -> bytes | int:
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            return _plain(request, 405, b"only GET and HEAD\n")
        answer = self._paths.get(request.path)
        if answer is None and self._web is not None and self._web.handles(request.path):
            return self._web.render(request)  # type: ignore[no-any-return]
        if answer is None:
            return _plain(request, 404, b"no such path; see /healthz, /metrics, /status, /\n")
        return answer(request)

    def healthz(self, request: Any) -> bytes:
        """200 when the node listens for clients and its Redis takes writes, else 503."""
        ok, body = health(self._running)
        request.setResponseCode(200 if ok else 503)
        request.setHeader(b"Content-Type", JSON)
        return json.dumps(body).encode() + b"\n"

    def metrics(self, request: Any) -> int:
        return self._with_summary(request, lambda held: (METRICS_TYPE, self._metrics.render(held)))

    def status(self, request: Any) -> int:
        # Every node's web page reads every node's figures (no client data here).
        request.setHeader(b"Access-Control-Allow-Origin", b"*")
        now = status_document(self._running, self._addresses)

        def document(held: Summary | None) -> tuple[bytes, bytes]:
            return JSON, json.dumps(with_summary(now, self._running, held)).encode() + b"\n"

        return self._with_summary(request, document)

    def _with_summary(self, request: Any, produce: Produce) -> int:
        """Answer ``request`` (200) once the summary hash is read or given up on
        (within SUMMARY_TIMEOUT)."""
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        d = self._summary.current().addCallback(produce)
        d.addCallback(_send, request, gone)
        d.addErrback(self._failed, request, gone)
        return NOT_DONE_YET

    @staticmethod
    def _failed(failure: Any, request: Any, gone: list[bool]) -> None:
        log.failure("admin endpoint: {path} failed", failure, path=request.path.decode(errors="replace"))
        if not gone:
            request.setResponseCode(500)
            _finish(request, TEXT, b"internal error; see the node's log\n")


def _plain(request: Any, code: int, body: bytes) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", TEXT)
    return body


def _send(answer: tuple[bytes, bytes], request: Any, gone: list[bool]) -> None:
    if not gone:  # else the client went away while Redis was asked
        _finish(request, *answer)


def _finish(request: Any, content_type: bytes, body: bytes) -> None:
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Content-Length", str(len(body)).encode())
    request.write(body)
    request.finish()


class _AdminChannel(HTTPChannel):
    counted_as = ""  # the address its site counted it under

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802 (Twisted's name)
        self.site.closed(self.counted_as)  # type: ignore[attr-defined]
        super().connectionLost(reason)


class _AdminSite(Site):
    """No log line per request (monitoring asks every few seconds); at most
    MAX_CONNECTIONS connections, MAX_PER_ADDRESS from one address, the next
    refused (and said, once a minute)."""

    noisy = False
    protocol = _AdminChannel  # type: ignore[assignment]  # (HTTP/1.1 only: no HTTP/2 negotiation)

    def __init__(self, resource: Resource, clock: IReactorTime) -> None:
        super().__init__(resource, timeout=IDLE_TIMEOUT)
        self.open_connections = 0
        self._by_address: dict[str, int] = {}
        self._clock = clock
        self._warned_at: dict[str, float] = {}

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802
        address = str(getattr(addr, "host", ""))
        if self.open_connections >= MAX_CONNECTIONS:
            self._refuse("all", f"{MAX_CONNECTIONS} connections open, the most it holds")
            return None
        if self._by_address.get(address, 0) >= MAX_PER_ADDRESS:
            self._refuse(address, f"{MAX_PER_ADDRESS} connections open from {address}, "
                                  "the most from one address")
            return None
        self.open_connections += 1
        self._by_address[address] = self._by_address.get(address, 0) + 1
        channel = super().buildProtocol(addr)
        channel.counted_as = address
        return channel

    def closed(self, address: str) -> None:
        self.open_connections -= 1
        left = self._by_address.pop(address) - 1
        if left:
            self._by_address[address] = left

    def _refuse(self, limit: str, why: str) -> None:
        """Say why connections are refused, once a minute per ``limit`` ("all",
        or the address)."""
        now = self._clock.seconds()
        if now - self._warned_at.get(limit, -60.0) >= 60:
            if len(self._warned_at) > 1000:  # (addresses come and go)
                self._warned_at.clear()
            self._warned_at[limit] = now
            log.warn("admin endpoint: {why}; refusing more (said once a minute)", why=why)

    def log(self, request: Any) -> None:
        """No line per request."""


def admin_site(running: RunningNode, addresses: Addresses, reactor: IReactorTime) -> Site:
    """The admin endpoint of ``running`` as a twisted.web Site (no access log),
    with the web page."""
    from herd.web import WebPage  # the page's code loads only with an admin endpoint

    web = WebPage(lambda: running.config, running.node.name.decode(), running.store, reactor)
    return _AdminSite(AdminResource(running, addresses, reactor, web), reactor)
