"""Google Places providers over treq: legacy Nearby Search and Places API (New).

Both providers answer :meth:`nearby` with a :data:`herd.places.provider.PlacesAnswer` in
the legacy Nearby Search shape, or fail with :class:`herd.places.provider.PlacesError`.
Every call is bounded three ways:

- in time: the whole call (waiting for a concurrency slot, connecting, headers
  and body) is cancelled after ``timeout`` seconds;
- in size: the body is read incrementally and the connection is dropped as soon
  as it exceeds ``max_body_bytes``;
- in concurrency: at most ``max_concurrent`` calls are outstanding at once;
  further calls wait for a slot (the wait counts against their timeout).

Failure messages state the cause for the log and never contain the API key.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Coroutine
from decimal import Decimal
from typing import Any, ClassVar, cast
from urllib.parse import quote, urlencode, urlsplit

from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore
from twisted.internet.error import ConnectError, ConnectionRefusedError, DNSLookupError
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.client import (
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.iweb import IResponse

from config.schema import ConfigError, PlacesConfig
from herd.http import BodyTooLarge, pooled_client, read_capped, treq_url
from herd.places.provider import PlacesAnswer, PlacesError, PlacesProvider, radius_text

LEGACY_URL = "https://maps.googleapis.com/maps/api/place/nearbysearch/json"
NEW_URL = "https://places.googleapis.com/v1/places:searchNearby"
NEW_FIELD_MASK = (
    "places.id,places.displayName,places.formattedAddress,places.shortFormattedAddress,"
    "places.location,places.types,places.rating,places.userRatingCount"
)
NEW_MAX_RESULTS = 20  # the Places API (New) caps maxResultCount at 20
NEW_MAX_RADIUS_M = 50000.0  # ... and the circle radius at 50 km
_DETAIL_CHARS = 300  # longest server-supplied detail quoted in an error message


def plain_coordinate(value: str) -> str:
    """``"+34.068930"`` -> ``"34.068930"``, ``"-0118.5"`` -> ``"-118.5"``: a
    ``+`` and the whole part's leading zeros dropped, a ``-`` kept, the
    fraction's digits unchanged."""
    sign = "-" if value.startswith("-") else ""
    whole, point, fraction = value.lstrip("+-").partition(".")
    return f"{sign}{whole.lstrip('0') or '0'}{point}{fraction}"


def safe_url(url: str) -> str:
    """``url`` without user info, query or fragment: fit to quote in a log line."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host  # an IPv6 address, bracketed as in the URL
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"




def decode_json(body: bytes) -> Any:
    """Parse ``body`` as JSON; PlacesError("invalid JSON") when it is not."""
    try:
        return json.loads(body, parse_constant=_not_json, parse_float=_finite)
    except (ValueError, RecursionError) as exc:
        raise PlacesError("invalid JSON") from exc


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's json module accepts NaN and Infinity


def _finite(text: str) -> float:
    """A JSON number too large for a float (1e400) would be infinity, which no
    reply or cache entry can hold as JSON: the answer is refused, not cached."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} is out of range")
    return value


def _clip(text: str) -> str:
    """Server-supplied text shortened for a log line."""
    text = " ".join(text.split())
    return text if len(text) <= _DETAIL_CHARS else text[:_DETAIL_CHARS] + "..."


def http_error(code: int, body: bytes) -> PlacesError:
    """PlacesError for a non-200 answer: ``HTTP 403`` plus the API's own error
    status and message when the body carries a Google JSON error."""
    detail = ""
    try:
        error = json.loads(body).get("error")
        if isinstance(error, dict):
            status, message = error.get("status"), error.get("message")
            detail = " ".join(str(x) for x in (status, message) if isinstance(x, str) and x)
    except (ValueError, RecursionError, AttributeError):
        pass
    return PlacesError(f"HTTP {code}" + (f": {_clip(detail)}" if detail else ""))


def _shape(what: str) -> PlacesError:
    return PlacesError(f"unexpected response shape: {what}")


def legacy_answer(doc: Any) -> PlacesAnswer:
    """Validate a legacy Nearby Search document. OK/ZERO_RESULTS give the
    document itself, every key in Google's order (the reply only cuts
    ``results``), with an empty ``html_attributions`` or ``results`` added when
    missing; any other status or shape raises PlacesError."""
    if not isinstance(doc, dict) or not isinstance(doc.get("status"), str):
        raise _shape("no status")
    status = doc["status"]
    if status not in ("OK", "ZERO_RESULTS"):
        message = doc.get("error_message")
        detail = f": {_clip(message)}" if isinstance(message, str) and message else ""
        raise PlacesError(f"status {_clip(status)}{detail}")
    results = doc.get("results", [])
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise _shape("results is not a list of objects")
    attributions = doc.get("html_attributions", [])
    if not isinstance(attributions, list):
        raise _shape("html_attributions is not a list")
    answer: PlacesAnswer = dict(doc) if "html_attributions" in doc else {"html_attributions": [], **doc}
    answer.setdefault("results", results)
    return answer


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def legacy_place(place: Any) -> dict[str, Any]:
    """One Places API (New) place in the legacy result shape. ``id`` and
    ``location`` are required; other fields default to empty."""
    if not isinstance(place, dict):
        raise _shape("place is not an object")
    location, place_id = place.get("location"), place.get("id")
    if not isinstance(place_id, str) or not isinstance(location, dict):
        raise _shape("place without id or location")
    lat, lng = location.get("latitude"), location.get("longitude")
    if not (_number(lat) and _number(lng)):
        raise _shape("place location is not numeric")
    display = place.get("displayName")
    name = display.get("text") if isinstance(display, dict) else None
    vicinity = place.get("shortFormattedAddress") or place.get("formattedAddress") or ""
    types = place.get("types", [])
    if not isinstance(types, list):
        raise _shape("place types is not a list")
    result: dict[str, Any] = {
        "name": name if isinstance(name, str) else "",
        "place_id": place_id,
        "vicinity": vicinity if isinstance(vicinity, str) else "",
        "geometry": {"location": {"lat": lat, "lng": lng}},
        "types": [t for t in types if isinstance(t, str)],
    }
    if _number(place.get("rating")):
        result["rating"] = place["rating"]
    if _number(place.get("userRatingCount")):
        result["user_ratings_total"] = place["userRatingCount"]
    return result


def new_answer(doc: Any) -> PlacesAnswer:
    """A Places API (New) ``{"places": [...]}`` document (``{}`` when nothing is
    near) mapped to the legacy answer shape."""
    if not isinstance(doc, dict):
        raise _shape("not an object")
    places = doc.get("places", [])
    if not isinstance(places, list):
        raise _shape("places is not a list")
    results = [legacy_place(p) for p in places]
    return {
        "html_attributions": [],
        "results": results,
        "status": "OK" if results else "ZERO_RESULTS",
    }


MIN_CALL_SECONDS = 0.1  # a call that would get less time than this is not made


class _GoogleProvider:
    """Common machinery: concurrency slot, timeout, body cap, error translation.

    Subclasses implement :meth:`_call` (one HTTP exchange, returning the answer
    or raising PlacesError) and set ``provider`` and ``default_url``.
    """

    provider: ClassVar[str]
    default_url: ClassVar[str]

    def __init__(
        self,
        reactor: IReactorTime,
        http_client: HTTPClient,
        key: str,
        url: str | None,
        timeout: float,
        max_body_bytes: int = 1_048_576,
        max_concurrent: int = 8,
    ) -> None:
        self._reactor = reactor
        self._http = http_client
        self._key = key
        self.url = url or self.default_url
        self.timeout = timeout
        self.max_body_bytes = max_body_bytes
        self._slots = DeferredSemaphore(max_concurrent)

    def nearby(self, lat: str, lon: str, radius_m: Decimal, limit: int) -> Deferred[PlacesAnswer]:
        """See :meth:`herd.places.provider.PlacesProvider.nearby`. Fails with PlacesError
        within ``timeout`` seconds; a caller's own ``cancel()`` gives CancelledError."""
        deadline = self._reactor.seconds() + self.timeout
        d = Deferred.fromCoroutine(self._in_slot(lambda: self._call(lat, lon, radius_m, limit), deadline))
        d.addTimeout(self.timeout, self._reactor, self._timed_out)
        return d.addErrback(self._explain)

    def _timed_out(self, result: object, timeout: float) -> Failure:
        """addTimeout's translation: whatever the cancelled call ended with
        (CancelledError, ResponseNeverReceived, ...) becomes the timeout."""
        return Failure(PlacesError(f"timed out after {timeout}s"))

    async def _in_slot(self, call: Callable[[], Coroutine[Deferred[Any], Any, PlacesAnswer]],
                       deadline: float) -> PlacesAnswer:
        """Run ``call`` once a concurrency slot is free, releasing it after; not
        at all when the slot comes too late to finish by ``deadline`` (a slot
        freed by a timed-out call goes to a request about to time out too:
        an API call then would be paid for and thrown away)."""
        slot = self._slots.acquire()
        waited = not slot.called
        await slot
        try:
            if waited and deadline - self._reactor.seconds() < min(MIN_CALL_SECONDS, self.timeout / 2):
                raise PlacesError(f"timed out waiting for a call slot ({self._slots.limit} calls at a time)")
            return await call()
        finally:
            self._slots.release()

    async def _call(self, lat: str, lon: str, radius_m: Decimal, limit: int) -> PlacesAnswer:
        raise NotImplementedError

    async def _read(self, response: Any) -> tuple[int, bytes]:
        """Status code and (capped) body of a treq response."""
        body = await read_capped(cast(IResponse, response), self.max_body_bytes)
        return int(response.code), body

    def _explain(self, failure: Failure) -> Failure:
        """Any failure -> PlacesError naming the cause and the URL (no query, no
        key). A caller's cancellation passes through unchanged."""
        exc = failure.value
        if exc is None or isinstance(exc, CancelledError):
            return failure
        if isinstance(exc, ResponseNeverReceived | ResponseFailed) and all(
            r.check(CancelledError) for r in exc.reasons
        ):
            return Failure(CancelledError())  # the HTTP layer wraps the caller's cancel
        return Failure(
            PlacesError(self._redact(f"{self.provider}: {self._cause(exc)} ({safe_url(self.url)})"))
        )

    def _cause(self, exc: BaseException) -> str:
        """A short description of why a call failed."""
        if isinstance(exc, PlacesError | BodyTooLarge):
            return str(exc)
        if isinstance(exc, ConnectionRefusedError):
            return "connection refused"
        if isinstance(exc, DNSLookupError):
            return "DNS lookup failed"
        if isinstance(exc, ConnectError):
            return f"connection failed: {type(exc).__name__}"
        if isinstance(exc, ResponseNeverReceived | ResponseFailed):
            kinds = ", ".join(type(r.value).__name__ for r in exc.reasons)
            return f"connection lost ({kinds})"
        return f"{type(exc).__name__}: {_clip(str(exc))}"

    def _redact(self, text: str) -> str:
        """``text`` with every form of the key replaced."""
        for form in {self._key, quote(self._key, safe=""), html.escape(self._key)}:
            if form:
                text = text.replace(form, "<key>")
        return text


class GoogleNearby(_GoogleProvider):
    """Legacy Nearby Search: ``GET <url>?location=<lat>,<lon>&radius=<m>&key=<key>``."""

    provider = "google"
    default_url = LEGACY_URL

    def request_url(self, lat: str, lon: str, radius_m: Decimal) -> str:
        """The full request URL (it contains the key: never log it)."""
        query = urlencode(
            [
                ("location", f"{plain_coordinate(lat)},{plain_coordinate(lon)}"),
                ("radius", radius_text(radius_m)),
                ("key", self._key),
            ],
            safe=",",
            quote_via=quote,
        )
        return f"{self.url}{'&' if '?' in self.url else '?'}{query}"

    async def _call(self, lat: str, lon: str, radius_m: Decimal, limit: int) -> PlacesAnswer:
        """One GET; non-200, non-JSON, bad shape or a failing status raise."""
        response = await self._http.get(
            treq_url(self.request_url(lat, lon, radius_m)), allow_redirects=False, unbuffered=True
        )
        code, body = await self._read(response)
        if code != 200:
            raise http_error(code, body)
        return legacy_answer(decode_json(body))


class GoogleNearbyNew(_GoogleProvider):
    """Places API (New) ``places:searchNearby`` (POST), answers mapped to the
    legacy shape."""

    provider = "google-new"
    default_url = NEW_URL

    def request_body(self, lat: str, lon: str, radius_m: Decimal, limit: int) -> dict[str, Any]:
        """The JSON request body; ``limit`` and radius clamped to the API's caps."""
        return {
            "maxResultCount": max(1, min(limit, NEW_MAX_RESULTS)),
            "locationRestriction": {
                "circle": {
                    "center": {"latitude": float(lat), "longitude": float(lon)},
                    "radius": min(float(radius_m), NEW_MAX_RADIUS_M),
                }
            },
        }

    def _headers(self) -> dict[bytes | str, bytes | str]:
        """Request headers: the key and the response field mask."""
        return {"X-Goog-Api-Key": self._key, "X-Goog-FieldMask": NEW_FIELD_MASK}

    async def _call(self, lat: str, lon: str, radius_m: Decimal, limit: int) -> PlacesAnswer:
        """One POST; non-200, non-JSON or bad shape raise."""
        response = await self._http.post(
            treq_url(self.url),
            json=self.request_body(lat, lon, radius_m, limit),
            headers=self._headers(),
            allow_redirects=False,
            unbuffered=True,
        )
        code, body = await self._read(response)
        if code != 200:
            raise http_error(code, body)
        return new_answer(decode_json(body))


_PROVIDERS: dict[str, type[_GoogleProvider]] = {
    "google": GoogleNearby,
    "google-new": GoogleNearbyNew,
}


def make_provider(
    config: PlacesConfig, reactor: Any, http_client: HTTPClient | None = None
) -> PlacesProvider:
    """The Google provider ``config.provider`` names, keyed from the environment
    variable ``config.key_env``.

    Raises ConfigError (one line) when the variable is unset, empty or blank, or the
    provider is unknown, NotImplementedError for ``offline`` (see
    herd/places/offline.py). ``http_client`` defaults to :func:`herd.http.pooled_client`.
    """
    if config.provider == "offline":
        raise NotImplementedError("the offline provider is herd/places/offline.py")
    cls = _PROVIDERS.get(config.provider)
    if cls is None:
        raise ConfigError(f"places.provider: unknown provider {config.provider!r}")
    key = config.key()
    client = http_client if http_client is not None else pooled_client(reactor)
    return cls(reactor, client, key, config.url, config.timeout)
