"""Google Places providers against a real twisted.web server on loopback.

No mocks: the providers talk HTTP through treq to a ``FakeGoogle`` resource
listening on 127.0.0.1 in the test's reactor. The fake checks what the real
API would check (location, radius in metres, key, field mask) and answers
more places than asked so that any cut is visible.
"""

from __future__ import annotations

import html
import json
import os
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from treq.client import HTTPClient
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import CancelledError, Deferred, DeferredList, gatherResults
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from config.schema import ConfigError, PlacesConfig
from herd.places.google import (
    NEW_FIELD_MASK,
    GoogleNearby,
    GoogleNearbyNew,
    decode_json,
    make_provider,
    plain_coordinate,
    radius_text,
    safe_url,
)
from herd.places.provider import PlacesAnswer, PlacesError
from herd.wire.client import format_whatsat_reply, squeeze_newlines

reactor: Any = global_reactor
KEY = "AIzaTEST-secret_key.42+/&<=>"  # (characters that URLs and HTML write otherwise)
KEY_FORMS = (KEY, quote(KEY, safe=""), html.escape(KEY))  # as an error message may echo it
LAT, LON = "+34.068930", "-118.445127"
MANY = 25  # the fake always answers this many places


def legacy_places(n: int) -> list[dict[str, Any]]:
    """``n`` places in the legacy result shape."""
    return [
        {
            "name": f"Place {i}",
            "place_id": f"pid{i}",
            "vicinity": f"{i} Main St",
            "geometry": {"location": {"lat": 34.0 + i / 1000, "lng": -118.4}},
            "types": ["point_of_interest"],
        }
        for i in range(n)
    ]


def new_places(n: int) -> list[dict[str, Any]]:
    """``n`` places as the Places API (New) returns them; odd ones lack the
    short address, rating and rating count."""
    places = []
    for i in range(n):
        place: dict[str, Any] = {
            "id": f"new{i}",
            "displayName": {"text": f"New Place {i}", "languageCode": "en"},
            "formattedAddress": f"{i} Long Address, Los Angeles, CA, USA",
            "location": {"latitude": 34.0 + i / 1000, "longitude": -118.4},
            "types": ["cafe", "food"],
        }
        if i % 2 == 0:
            place.update(shortFormattedAddress=f"{i} Short", rating=4.5, userRatingCount=10 + i)
        places.append(place)
    return places


class FakeGoogle(Resource):
    """Both Google endpoints in one leaf resource, in one of several modes.

    Records every request as a dict (method, path, args, headers, body) and the
    highest number of requests it held outstanding at once.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.mode = "ok"
        self.requests: list[dict[str, Any]] = []
        self.outstanding = 0
        self.max_outstanding = 0
        self.disconnected: list[Deferred[None]] = []
        self.arrived: Deferred[None] = Deferred()  # fires at the first held request

    def _record(self, request: Request) -> None:
        body = request.content.read() if request.content is not None else b""
        self.requests.append(
            {
                "method": request.method.decode(),
                "path": request.path.decode(),
                "uri": request.uri.decode(),
                "args": {k.decode(): [v.decode() for v in vs] for k, vs in request.args.items()},
                "headers": {
                    k.decode().lower(): b",".join(v).decode()
                    for k, v in request.requestHeaders.getAllRawHeaders()
                },
                "body": body,
            }
        )

    def _check_legacy(self, request: Request) -> str | None:
        """The legacy API's own checks: an error message, or None when fine."""
        args = self.requests[-1]["args"]
        if args.get("key") != [KEY]:
            return "The provided API key is invalid."
        if not args.get("location") or not args.get("radius"):
            return "Invalid request. Missing the 'location' or 'radius' parameter."
        return None

    def render_GET(self, request: Request) -> bytes | int:  # noqa: N802
        self._record(request)
        error = self._check_legacy(request)
        if error is not None:
            return self._json(request, {"status": "REQUEST_DENIED", "error_message": error})
        return self._answer(request, {"html_attributions": [], "results": legacy_places(MANY)})

    def render_POST(self, request: Request) -> bytes | int:  # noqa: N802
        self._record(request)
        headers = self.requests[-1]["headers"]
        if headers.get("x-goog-api-key") != KEY:
            request.setResponseCode(403)
            return self._json(request, {"error": {"code": 403, "status": "PERMISSION_DENIED"}})
        if headers.get("x-goog-fieldmask") != NEW_FIELD_MASK:
            request.setResponseCode(400)
            return self._json(request, {"error": {"status": "INVALID_ARGUMENT"}})
        return self._answer(request, {"places": new_places(MANY)})

    def _answer(self, request: Request, ok: dict[str, Any]) -> bytes | int:
        """Answer according to ``mode``; ``ok`` is the successful document."""
        mode = self.mode
        if mode == "ok":
            if "results" in ok:
                ok["status"] = "OK"
            return self._json(request, ok)
        if mode == "google-order":  # as Google sends it, with a key herd does not know
            return self._json(request, {"html_attributions": [], "next_page_token": "page-2",
                                        "results": legacy_places(MANY), "status": "OK",
                                        "info_messages": ["a note"]})
        if mode == "zero":
            doc = {"html_attributions": [], "results": [], "status": "ZERO_RESULTS"}
            return self._json(request, doc if "results" in ok else {})
        if mode == "denied":
            return self._json(
                request,
                {"status": "REQUEST_DENIED", "error_message": "The key {} ({}, {}) is not allowed.".format(
                    *KEY_FORMS)},
            )
        if mode == "http500":
            request.setResponseCode(500)
            return b"Internal error for key=" + KEY.encode()
        if mode == "badjson":
            return b"<html>not json " + KEY.encode() + b"</html>"
        if mode == "badshape":
            return self._json(request, {"results": "nope"} if "results" in ok else [1, 2])
        if mode in ("hang", "stall"):
            return self._hold(request, None)
        if mode == "slow":
            return self._hold(request, json.dumps({**ok, "status": "OK"}).encode())
        raise AssertionError(f"unknown mode {mode}")

    def _hold(self, request: Request, body: bytes | None) -> int:
        """Keep the request outstanding: forever (``hang``), forever after half
        a body (``stall``), or 50 ms before sending ``body`` (``slow``)."""
        self.outstanding += 1
        self.max_outstanding = max(self.max_outstanding, self.outstanding)
        finished = request.notifyFinish()
        finished.addBoth(self._released)
        self.disconnected.append(finished)
        if not self.arrived.called:
            self.arrived.callback(None)
        if self.mode == "stall":
            request.setHeader(b"content-length", b"100000")
            request.write(b'{"status": "OK", "results": [')
        if body is not None:
            reactor.callLater(0.05, self._finish, request, body)
        return NOT_DONE_YET

    def _released(self, _: object) -> None:
        self.outstanding -= 1

    @staticmethod
    def _finish(request: Request, body: bytes) -> None:
        request.setHeader(b"content-type", b"application/json")
        request.write(body)
        request.finish()

    @staticmethod
    def _json(request: Request, doc: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json; charset=UTF-8")
        return json.dumps(doc).encode()


class TrackingSite(Site):
    """A Site that remembers its connections so tests can close them all."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)
        self.channels: list[tuple[Any, Deferred[None]]] = []

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802
        channel: Any = super().buildProtocol(addr)
        lost: Deferred[None] = Deferred()
        make_connection, connection_lost = channel.makeConnection, channel.connectionLost

        def made(transport: Any) -> None:
            self.channels.append((transport, lost))
            make_connection(transport)

        def gone(reason: Failure) -> None:
            connection_lost(reason)
            lost.callback(None)

        channel.makeConnection, channel.connectionLost = made, gone
        return channel

    def close_all(self) -> Deferred[Any]:
        """Drop every server-side connection; fires once all are gone."""
        for transport, lost in self.channels:
            if not lost.called:
                transport.abortConnection()
        return DeferredList([lost for _, lost in self.channels])


class GooglePlacesTests(unittest.TestCase):
    """Each test gets its own fake server, connection pool and treq client."""

    def setUp(self) -> None:
        self.fake = FakeGoogle()
        self.site = TrackingSite(self.fake)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.pool = HTTPConnectionPool(reactor)
        agent: Any = Agent(reactor, pool=self.pool)
        self.client = HTTPClient(agent)
        # Cleanups run last-added first: server connections (which also lets the
        # client finish whatever it was parsing), then the pool, then the port.
        self.addCleanup(self.port.stopListening)
        self.addCleanup(self.pool.closeCachedConnections)
        self.addCleanup(self.site.close_all)

    def legacy(self, **kw: Any) -> GoogleNearby:
        args: dict[str, Any] = {"key": KEY, "url": self.base + "/nearbysearch/json"}
        args.update({"timeout": 2.0, **kw})
        return GoogleNearby(reactor, self.client, **args)

    def new(self, **kw: Any) -> GoogleNearbyNew:
        args: dict[str, Any] = {"key": KEY, "url": self.base + "/v1/places:searchNearby"}
        args.update({"timeout": 2.0, **kw})
        return GoogleNearbyNew(reactor, self.client, **args)

    async def fails(self, d: Deferred[PlacesAnswer], *expected: str) -> str:
        """Await ``d``; it must fail with PlacesError naming every ``expected``
        fragment and never the key. Returns the message."""
        try:
            answer = await d
        except PlacesError as exc:
            message = str(exc)
        else:
            self.fail(f"expected PlacesError, got {answer!r}")
        for fragment in expected:
            self.assertIn(fragment, message)
        for form in KEY_FORMS:
            self.assertNotIn(form, message)
        return message

    # --- legacy Nearby Search -------------------------------------------------

    async def test_legacy_ok_integral_radius(self) -> None:
        answer = await self.legacy().nearby(LAT, LON, Decimal("10000"), 5)
        self.assertEqual(answer["status"], "OK")
        self.assertEqual(len(answer["results"]), MANY)  # the caller cuts, not the provider
        self.assertEqual(answer["html_attributions"], [])
        self.assertEqual(answer["results"][0]["name"], "Place 0")
        [req] = self.fake.requests
        self.assertEqual(req["method"], "GET")
        self.assertEqual(req["path"], "/nearbysearch/json")
        self.assertEqual(req["args"]["location"], ["34.068930,-118.445127"])
        self.assertEqual(req["args"]["radius"], ["10000"])
        self.assertEqual(req["args"]["key"], [KEY])
        self.assertIn("location=34.068930,-118.445127", req["uri"])

    async def test_legacy_fractional_radius(self) -> None:
        answer = await self.legacy().nearby("-10.5", "+020.25", Decimal("1500.5"), 3)
        self.assertEqual(answer["status"], "OK")
        [req] = self.fake.requests
        self.assertEqual(req["args"]["radius"], ["1500.5"])
        self.assertEqual(req["args"]["location"], ["-10.5,20.25"])  # the leading zero dropped

    async def test_a_url_whose_host_is_an_ipv6_literal(self) -> None:
        # treq refused it before sending anything (hyperlink IDNA-encoded "::1").
        port = reactor.listenTCP(0, self.site, interface="::1")
        self.addCleanup(port.stopListening)
        base = f"http://[::1]:{port.getHost().port}"
        legacy = await self.legacy(url=base + "/nearbysearch/json").nearby(LAT, LON, Decimal("10000"), 5)
        new = await self.new(url=base + "/v1/places:searchNearby").nearby(LAT, LON, Decimal("10000"), 5)
        self.assertEqual((legacy["status"], new["status"]), ("OK", "OK"))
        self.assertEqual([req["method"] for req in self.fake.requests], ["GET", "POST"])

    def test_radius_text(self) -> None:
        self.assertEqual(radius_text(Decimal("10000")), "10000")
        self.assertEqual(radius_text(Decimal("1E+4")), "10000")
        self.assertEqual(radius_text(Decimal("50000.000")), "50000")
        self.assertEqual(radius_text(Decimal("1500.50")), "1500.5")
        self.assertEqual(radius_text(Decimal("0.0001E+3")), "0.1")

    async def test_legacy_answer_is_googles_document(self) -> None:
        """Every key, in Google's order; the reply only cuts ``results``."""
        self.fake.mode = "google-order"
        answer = await self.legacy().nearby(LAT, LON, Decimal("100"), 5)
        self.assertEqual(list(answer), ["html_attributions", "next_page_token", "results", "status",
                                        "info_messages"])
        reply = format_whatsat_reply(b"AT x", answer, 2)
        expected = {**answer, "results": answer["results"][:2]}
        text = squeeze_newlines(json.dumps(expected, indent=3))
        self.assertEqual(reply, b"AT x\n" + text.encode() + b"\n\n")

    async def test_legacy_zero_results(self) -> None:
        self.fake.mode = "zero"
        answer = await self.legacy().nearby(LAT, LON, Decimal("100"), 5)
        self.assertEqual(answer, {"html_attributions": [], "results": [], "status": "ZERO_RESULTS"})

    async def test_legacy_request_denied(self) -> None:
        self.fake.mode = "denied"
        message = await self.fails(self.legacy().nearby(LAT, LON, Decimal("100"), 5), "status REQUEST_DENIED")
        self.assertIn("is not allowed", message)

    async def test_legacy_wrong_key_is_denied(self) -> None:
        provider = self.legacy(key="wrong-key-value")
        message = await self.fails(provider.nearby(LAT, LON, Decimal("100"), 5), "REQUEST_DENIED")
        self.assertNotIn("wrong-key-value", message)

    async def test_legacy_http_500(self) -> None:
        self.fake.mode = "http500"
        message = await self.fails(self.legacy().nearby(LAT, LON, Decimal("100"), 5), "HTTP 500")
        self.assertIn(self.base + "/nearbysearch/json", message)
        self.assertNotIn("key=", message)

    async def test_legacy_invalid_json(self) -> None:
        self.fake.mode = "badjson"
        await self.fails(self.legacy().nearby(LAT, LON, Decimal("100"), 5), "invalid JSON")

    def test_coordinates_and_logged_urls(self) -> None:
        """Found by a review: leading zeros went to the API as sent, and an IPv6
        URL was logged without its brackets."""
        for sent, asked in (("+034.068930", "34.068930"), ("-0118.445127", "-118.445127"),
                            ("+0.0", "0.0"), ("-0.0", "-0.0"), ("+00", "0"), ("-5", "-5")):
            self.assertEqual(plain_coordinate(sent), asked)
        self.assertEqual(safe_url("http://u:p@[::1]:43050/x?key=1#f"), "http://[::1]:43050/x")

    def test_nan_and_infinity_are_not_json(self) -> None:
        # 1e400: a number too large for a float was infinity, and its answer
        # (cached for the TTL) could never be written as JSON (found by a review).
        for body in (b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -Infinity}',
                     b'{"a": 1e400}', b'{"a": -1E999}'):
            with self.assertRaises(PlacesError):
                decode_json(body)

    async def test_legacy_wrong_shape(self) -> None:
        self.fake.mode = "badshape"
        await self.fails(self.legacy().nearby(LAT, LON, Decimal("100"), 5), "shape")

    def clocked(self, timeout: float, **kw: Any) -> tuple[GoogleNearby, Clock]:
        """A provider whose time (its timeouts) is a Clock; HTTP runs on the
        real reactor. A timeout then fires when the test says, never before
        the request has reached the fake, however busy the machine."""
        clock = Clock()
        return GoogleNearby(clock, self.client, KEY, self.base + "/nearbysearch/json", timeout, **kw), clock

    async def test_timeout_without_headers(self) -> None:
        self.fake.mode = "hang"
        provider, clock = self.clocked(0.3)
        answer = provider.nearby(LAT, LON, Decimal("100"), 5)
        await self.fake.arrived
        clock.advance(0.3)
        await self.fails(answer, "timed out after 0.3s")
        await self.fake.disconnected[0]  # the client dropped the connection

    async def test_timeout_during_body(self) -> None:
        self.fake.mode = "stall"
        provider, clock = self.clocked(0.3)
        answer = provider.nearby(LAT, LON, Decimal("100"), 5)
        await self.fake.arrived  # (and half a body is sent)
        await deferLater(reactor, 0.05, lambda: None)  # most likely read meanwhile; the test holds either way
        clock.advance(0.3)
        await self.fails(answer, "timed out")
        await self.fake.disconnected[0]  # the half-read connection was dropped

    async def test_caller_cancel(self) -> None:
        self.fake.mode = "hang"
        d = self.legacy().nearby(LAT, LON, Decimal("100"), 5)
        await self.fake.arrived
        d.cancel()
        with self.assertRaises(CancelledError):
            await d
        await self.fake.disconnected[0]

    async def test_oversized_body(self) -> None:
        provider = self.legacy(max_body_bytes=1000)
        await self.fails(provider.nearby(LAT, LON, Decimal("100"), 5), "response over 1000 bytes")

    async def test_connection_refused(self) -> None:
        await self.port.stopListening()
        await self.fails(self.legacy().nearby(LAT, LON, Decimal("100"), 5), "connection refused")

    async def test_concurrency_cap(self) -> None:
        self.fake.mode = "slow"
        provider = self.legacy(max_concurrent=2)
        calls = [provider.nearby(LAT, LON, Decimal("100"), 5) for _ in range(4)]
        answers = await gatherResults(calls)
        self.assertEqual([a["status"] for a in answers], ["OK"] * 4)
        self.assertEqual(len(self.fake.requests), 4)
        self.assertEqual(self.fake.max_outstanding, 2)

    async def test_waiting_for_a_slot_counts_against_timeout(self) -> None:
        self.fake.mode = "hang"
        provider, clock = self.clocked(0.3, max_concurrent=1)
        first = provider.nearby(LAT, LON, Decimal("100"), 5)
        second = provider.nearby(LAT, LON, Decimal("100"), 5)
        await self.fake.arrived
        clock.advance(0.3)
        await self.fails(first, "timed out")
        await self.fails(second, "timed out")
        self.assertEqual(len(self.fake.requests), 1)  # the second never got a slot
        self.fake.mode = "ok"  # the slots are free again
        answer = await provider.nearby(LAT, LON, Decimal("100"), 5)
        self.assertEqual(answer["status"], "OK")

    async def test_a_slot_freed_too_late_is_not_used(self) -> None:
        """A request that waited for a slot until just before its own timeout
        makes no call: it would be paid for and thrown away. The provider's
        time is a Clock (HTTP still runs on the real reactor)."""
        self.fake.mode = "hang"
        provider, clock = self.clocked(0.3, max_concurrent=1)
        first = provider.nearby(LAT, LON, Decimal("100"), 5)
        await self.until(lambda: len(self.fake.requests) == 1)
        clock.advance(0.25)
        second = provider.nearby(LAT, LON, Decimal("200"), 5)  # waits: its deadline is 0.55
        clock.advance(0.05)  # the first times out; the second gets the slot with 0.25 s left
        await self.until(lambda: len(self.fake.requests) == 2)
        clock.advance(0.25)
        await self.fails(first, "timed out after 0.3s")
        await self.fails(second, "timed out after 0.3s")
        third = provider.nearby(LAT, LON, Decimal("300"), 5)  # deadline 0.85
        await self.until(lambda: len(self.fake.requests) == 3)
        clock.advance(0.05)
        fourth = provider.nearby(LAT, LON, Decimal("400"), 5)  # waits: its deadline is 0.90
        clock.advance(0.25)  # the third times out; the fourth would have 0.05 s left
        await self.fails(third, "timed out after 0.3s")
        await self.fails(fourth, "timed out waiting for a call slot")
        await deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(len(self.fake.requests), 3)  # no call for the fourth

    async def test_a_short_timeout_still_calls_when_a_slot_is_free(self) -> None:
        """Review: with places.timeout 0.08 every request was refused unasked."""
        provider, clock = self.clocked(0.08)
        self.fake.mode = "hang"
        answer = provider.nearby(LAT, LON, Decimal("100"), 5)
        await self.fake.arrived
        clock.advance(0.08)
        await self.fails(answer, "timed out after 0.08s")
        self.assertEqual(len(self.fake.requests), 1)

    async def until(self, condition: Any, timeout: float = 5.0) -> None:
        for _ in range(int(timeout / 0.01)):
            if condition():
                return
            await deferLater(reactor, 0.01, lambda: None)
        self.fail("condition not met")

    async def test_connection_reused_after_success(self) -> None:
        provider = self.legacy()
        for _ in range(3):
            await provider.nearby(LAT, LON, Decimal("100"), 5)
        self.assertEqual(len(self.site.channels), 1)

    # --- Places API (New) -----------------------------------------------------

    async def test_new_mapping_and_headers(self) -> None:
        answer = await self.new().nearby(LAT, LON, Decimal("1500.5"), 7)
        [req] = self.fake.requests
        self.assertEqual(req["method"], "POST")
        self.assertEqual(req["path"], "/v1/places:searchNearby")
        self.assertEqual(req["headers"]["x-goog-api-key"], KEY)
        self.assertEqual(req["headers"]["x-goog-fieldmask"], NEW_FIELD_MASK)
        self.assertIn("application/json", req["headers"]["content-type"])
        self.assertEqual(
            json.loads(req["body"]),
            {
                "maxResultCount": 7,
                "locationRestriction": {
                    "circle": {
                        "center": {"latitude": 34.06893, "longitude": -118.445127},
                        "radius": 1500.5,
                    }
                },
            },
        )
        self.assertEqual(answer["status"], "OK")
        self.assertEqual(answer["html_attributions"], [])
        self.assertEqual(len(answer["results"]), MANY)
        first, second = answer["results"][:2]
        self.assertEqual(
            first,
            {
                "name": "New Place 0",
                "place_id": "new0",
                "vicinity": "0 Short",
                "geometry": {"location": {"lat": 34.0, "lng": -118.4}},
                "types": ["cafe", "food"],
                "rating": 4.5,
                "user_ratings_total": 10,
            },
        )
        self.assertEqual(second["vicinity"], "1 Long Address, Los Angeles, CA, USA")
        self.assertNotIn("rating", second)
        self.assertNotIn("user_ratings_total", second)

    async def test_new_zero_results(self) -> None:
        self.fake.mode = "zero"
        answer = await self.new().nearby(LAT, LON, Decimal("100"), 20)
        self.assertEqual(answer, {"html_attributions": [], "results": [], "status": "ZERO_RESULTS"})
        self.assertEqual(json.loads(self.fake.requests[0]["body"])["maxResultCount"], 20)

    async def test_new_wrong_key_is_http_403(self) -> None:
        provider = self.new(key="another-wrong-key")
        message = await self.fails(provider.nearby(LAT, LON, Decimal("100"), 5), "HTTP 403")
        self.assertIn("PERMISSION_DENIED", message)
        self.assertNotIn("another-wrong-key", message)

    async def test_new_http_500_and_bad_json(self) -> None:
        self.fake.mode = "http500"
        await self.fails(self.new().nearby(LAT, LON, Decimal("100"), 5), "HTTP 500")
        self.fake.mode = "badjson"
        await self.fails(self.new().nearby(LAT, LON, Decimal("100"), 5), "invalid JSON")
        self.fake.mode = "badshape"
        await self.fails(self.new().nearby(LAT, LON, Decimal("100"), 5), "shape")

    async def test_new_timeout_and_size_cap(self) -> None:
        await self.fails(
            self.new(max_body_bytes=1000).nearby(LAT, LON, Decimal("100"), 5),
            "response over 1000 bytes",
        )
        self.fake.mode = "hang"
        await self.fails(self.new(timeout=0.3).nearby(LAT, LON, Decimal("100"), 5), "timed out")


class MakeProviderTests(unittest.TestCase):
    ENV = "HERD_TEST_PLACES_KEY"

    def setUp(self) -> None:
        saved = os.environ.pop(self.ENV, None)
        if saved is not None:
            self.addCleanup(os.environ.__setitem__, self.ENV, saved)
        self.addCleanup(os.environ.pop, self.ENV, None)
        agent: Any = Agent(reactor)
        self.client = HTTPClient(agent)

    def config(self, provider: str) -> PlacesConfig:
        return PlacesConfig(provider=provider, key_env=self.ENV, timeout=1.5)

    def test_missing_or_empty_key(self) -> None:
        for value in (None, "", "  \t"):
            if value is not None:
                os.environ[self.ENV] = value
            for provider in ("google", "google-new"):
                with self.assertRaises(ConfigError) as caught:
                    make_provider(self.config(provider), reactor, self.client)
                self.assertEqual(
                    str(caught.exception),
                    f"places.key_env: environment variable {self.ENV} is not set, or empty or blank",
                )

    def test_builds_providers(self) -> None:
        os.environ[self.ENV] = KEY
        legacy = make_provider(self.config("google"), reactor, self.client)
        self.assertIsInstance(legacy, GoogleNearby)
        assert isinstance(legacy, GoogleNearby)
        self.assertEqual(legacy.timeout, 1.5)
        self.assertIn("maps.googleapis.com", legacy.url)
        new = make_provider(self.config("google-new"), reactor)
        self.assertIsInstance(new, GoogleNearbyNew)
        assert isinstance(new, GoogleNearbyNew)
        self.assertIn("places.googleapis.com", new.url)

    def test_offline_and_unknown(self) -> None:
        with self.assertRaises(NotImplementedError):
            make_provider(self.config("offline"), reactor)
        with self.assertRaises(ConfigError):
            make_provider(self.config("bing"), reactor)
