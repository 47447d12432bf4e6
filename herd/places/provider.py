"""The places-provider interface that WHATSAT answers through.

A provider answers "places near (lat, lon) within radius metres" with a dict in
the shape of a Google Places Nearby Search (legacy) response:
``{"html_attributions": [...], "results": [...], "status": "OK" | "ZERO_RESULTS",
"next_page_token"?: str}``. The caller cuts ``results`` to the bound the client
asked for; a provider may return more.
"""

from __future__ import annotations

from decimal import Decimal, localcontext
from typing import Any, Protocol

from twisted.internet.defer import Deferred

PlacesAnswer = dict[str, Any]


def radius_text(radius_m: Decimal) -> str:
    """Metres as APIs and GEOSEARCH want them: ``"10000"`` when integral, else a
    plain decimal (``"1500.5"``), never with an exponent; every digit kept."""
    with localcontext(prec=len(radius_m.as_tuple().digits) + 8):  # (the default rounds to 28)
        if radius_m == radius_m.to_integral_value():
            return str(int(radius_m))
        return format(radius_m.normalize(), "f")


class PlacesError(Exception):
    """The provider could not answer. ``str()`` states the cause for the log
    (HTTP code, API status, timeout), never the API key."""


class PlacesProvider(Protocol):
    def nearby(self, lat: str, lon: str, radius_m: Decimal, limit: int) -> Deferred[PlacesAnswer]:
        """Places within ``radius_m`` metres of the point, nearest or most relevant
        first. ``lat``/``lon`` are the client's fields as sent (explicit sign, e.g.
        ``"+34.068930"``, ``"-118.445127"``); ``limit`` is the client's bound (1..20).

        Fires with a PlacesAnswer, or fails with PlacesError (timeouts included:
        every provider bounds its own calls in time)."""
        ...
