"""The client and peer line protocol as pure functions: bytes in, values out.

Nothing here does I/O or reads a clock: the caller passes the receive time.
Every function accepts arbitrary bytes and never raises on them; anything
that is not a valid request comes back as :class:`Invalid`, whose reply is
``? `` followed by the line exactly as received.

Times are POSIX seconds kept verbatim as sent and compared as integer
nanoseconds, never as floats. Numeric ranges are checked on exact decimals.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any, NamedTuple

from config.schema import MAX_NODE_NAME_BYTES

NS_PER_S = 1_000_000_000
MAX_CLIENT_ID_BYTES = 256
# Redis GEO indexes latitudes only within this band (EPSG:3857 limits).
GEO_LAT_LIMIT = Decimal("85.05112878")

_COORD = rb"[+-][0-9]+(?:\.[0-9]+)?"
_LOCATION_RE = re.compile(rb"(" + _COORD + rb")(" + _COORD + rb")")
_TIME_RE = re.compile(rb"([0-9]+)(?:\.([0-9]{1,9}))?")
_RADIUS_RE = re.compile(rb"[0-9]+(?:\.[0-9]+)?")
_COUNT_RE = re.compile(rb"[0-9]+")
_SKEW_RE = re.compile(rb"[+-][0-9]+\.[0-9]{9}")
# Seconds with more digits than this are centuries past any sane clock bound.
_MAX_SECONDS_DIGITS = 15
# An AT line as nodes make it: six fields separated by single spaces. Peers
# send records this way, so one match does most of parse_at_line's work; any
# other line takes the field by field way (same answers: see parse_at_line).
# The match also bounds the client id's length and the seconds' digits
# (leading zeros left out of the group), and takes only coordinates well
# inside their range (|lat| < 90 in at most two whole digits, |lon| < 180 in
# at most three), so what is left to check is little.
_LAT_INSIDE = rb"[+-][0-8]?[0-9](?:\.[0-9]+)?"
_LON_INSIDE = rb"[+-](?:1[0-7][0-9]|[0-9]?[0-9])(?:\.[0-9]+)?"
_FIELD = rb"[^ \t\n\r\x0b\x0c]+"  # what bytes.split() keeps together
_CLIENT_ID = rb"[^ \t\n\r\x0b\x0c]{1,%d}" % MAX_CLIENT_ID_BYTES
_TIME = rb"0*([0-9]{1,%d})(?:\.([0-9]{1,9}))?" % _MAX_SECONDS_DIGITS
_AT_LINE_RE = re.compile(rb"AT (%s) ([+-][0-9]+\.[0-9]{9}) (%s) ((%s)(%s)) (%s)"
                         % (_FIELD, _CLIENT_ID, _LAT_INSIDE, _LON_INSIDE, _TIME))
# The same for an IAMAT as clients send it (single spaces): parse_request's
# quick way; any other line takes the field by field way (same answers).
_IAMAT_LINE_RE = re.compile(rb"IAMAT (%s) ((%s)(%s)) (%s)" % (_CLIENT_ID, _LAT_INSIDE, _LON_INSIDE, _TIME))
_new = tuple.__new__  # makes the NamedTuples below without their __new__'s Python frame


def refusal(line: bytes) -> bytes:
    """The answer to a line the node cannot serve: ``? <line>``, the line as received."""
    return b"? " + line + b"\n"


class Invalid(NamedTuple):
    """A line that is not a valid request; the reply is ``? <line>``."""

    line: bytes

    @property
    def reply(self) -> bytes:
        return refusal(self.line)


class Location(NamedTuple):
    text: bytes  # as sent, e.g. b"+34.068930-118.445127"
    lat: bytes  # b"+34.068930"
    lon: bytes  # b"-118.445127"


class ClientTime(NamedTuple):
    text: bytes  # as sent, e.g. b"1621464827.959498503"
    ns: int  # the same instant in integer nanoseconds


class Iamat(NamedTuple):
    line: bytes
    client_id: bytes
    location: Location
    time: ClientTime


class Whatsat(NamedTuple):
    line: bytes
    client_id: bytes
    radius_km: Decimal
    limit: int

    @property
    def radius_m(self) -> Decimal:
        """Exactly, however many digits (a product would round to 28)."""
        sign, digits, exponent = self.radius_km.as_tuple()
        return Decimal((sign, digits, int(exponent) + 3))


class AtRecord(NamedTuple):
    """A client's stored position: the AT line as first made, and its parts."""

    server: bytes
    skew: bytes
    client_id: bytes
    location: Location
    time: ClientTime
    # ``AT <server> <skew> <client-id> <location> <client-time>``, no newline:
    # made once (see at_record), or the very line parsed when it had this form.
    line: bytes


def at_record(server: bytes, skew: bytes, client_id: bytes, location: Location, time: ClientTime) -> AtRecord:
    """The AtRecord of these parts, its line made from them."""
    line = b"AT %s %s %s %s %s" % (server, skew, client_id, location.text, time.text)
    return _new(AtRecord, (server, skew, client_id, location, time, line))


Request = Iamat | Whatsat


def parse_location(field: bytes) -> Location | None:
    """``[+-]lat[+-]lon`` with explicit signs, |lat| <= 90, |lon| <= 180."""
    m = _LOCATION_RE.fullmatch(field)
    if m is None:
        return None
    lat, lon = m.group(1), m.group(2)
    if not (_within(lat, 90) and _within(lon, 180)):
        return None
    return Location(field, lat, lon)


def _within(coordinate: bytes, limit: int) -> bool:
    """|coordinate| <= limit, exactly, for a signed decimal the regex accepted."""
    whole, _, fraction = coordinate[1:].partition(b".")
    whole = whole.lstrip(b"0")
    if len(whole) > 3:
        return False
    value = int(whole or b"0")
    return value < limit or (value == limit and not fraction.strip(b"0"))


def parse_client_time(field: bytes) -> ClientTime | None:
    """POSIX seconds ``[0-9]+(\\.[0-9]{1,9})?``, kept verbatim, valued in ns."""
    m = _TIME_RE.fullmatch(field)
    if m is None:
        return None
    seconds = m.group(1).lstrip(b"0") or b"0"
    if len(seconds) > _MAX_SECONDS_DIGITS:
        return None
    fraction = (m.group(2) or b"").ljust(9, b"0")
    return ClientTime(field, int(seconds) * NS_PER_S + int(fraction or b"0"))


def parse_radius(field: bytes) -> Decimal | None:
    """Kilometres, ``[0-9]+(\\.[0-9]+)?`` with 0 < r <= 50."""
    if _RADIUS_RE.fullmatch(field) is None:
        return None
    radius = Decimal(field.decode())
    return radius if 0 < radius <= 50 else None


def parse_count(field: bytes) -> int | None:
    """Result bound, ``[0-9]+`` with 1 <= n <= 20."""
    if _COUNT_RE.fullmatch(field) is None:
        return None
    digits = field.lstrip(b"0")
    if len(digits) > 2:
        return None
    count = int(digits or b"0")
    return count if 1 <= count <= 20 else None


def parse_request(line: bytes, now_ns: int, max_future_ns: int) -> Request | Invalid | None:
    """Parse one client line (terminator already removed).

    Returns None for an empty or all-white-space line (ignored), a request, or
    Invalid. An IAMAT whose client-time is more than ``max_future_ns`` ahead
    of ``now_ns`` is Invalid.
    """
    m = _IAMAT_LINE_RE.fullmatch(line)
    if m is not None:
        return _iamat_of_match(line, m, now_ns, max_future_ns)
    fields = line.split()
    if not fields:
        return None
    command = fields[0]
    if command == b"IAMAT" and len(fields) == 4:
        return _parse_iamat(line, fields, now_ns, max_future_ns)
    if command == b"WHATSAT" and len(fields) == 4:
        return _parse_whatsat(line, fields)
    return Invalid(line)


def _parse_iamat(line: bytes, fields: list[bytes], now_ns: int, max_future_ns: int) -> Iamat | Invalid:
    _, client_id, location_field, time_field = fields
    location = parse_location(location_field)
    client_time = parse_client_time(time_field)
    if (
        len(client_id) > MAX_CLIENT_ID_BYTES
        or location is None
        or client_time is None
        or client_time.ns - now_ns > max_future_ns
    ):
        return Invalid(line)
    return Iamat(line, client_id, location, client_time)


def _iamat_of_match(line: bytes, m: re.Match[bytes], now_ns: int, max_future_ns: int) -> Iamat | Invalid:
    """_parse_iamat for a line _IAMAT_LINE_RE matched (the same checks)."""
    client_id, location_field, lat, lon, time_field, seconds, fraction = m.groups()
    ns = int(seconds + fraction.ljust(9, b"0")) if fraction else int(seconds) * NS_PER_S
    if ns - now_ns > max_future_ns:
        return Invalid(line)
    return _new(Iamat, (line, client_id, _new(Location, (location_field, lat, lon)),
                        _new(ClientTime, (time_field, ns))))


def _parse_whatsat(line: bytes, fields: list[bytes]) -> Whatsat | Invalid:
    _, client_id, radius_field, count_field = fields
    radius = parse_radius(radius_field)
    count = parse_count(count_field)
    if len(client_id) > MAX_CLIENT_ID_BYTES or radius is None or count is None:
        return Invalid(line)
    return Whatsat(line, client_id, radius, count)


def format_skew(delta_ns: int) -> bytes:
    """Signed seconds with exactly 9 fractional digits: ``+0.263873386``."""
    sign = b"-" if delta_ns < 0 else b"+"
    seconds, fraction = divmod(abs(delta_ns), NS_PER_S)
    return b"%s%d.%09d" % (sign, seconds, fraction)


def make_record(server: bytes, received_ns: int, request: Iamat) -> AtRecord:
    """The AT record a node makes for an IAMAT it received at ``received_ns``."""
    return at_record(server, format_skew(received_ns - request.time.ns), request.client_id, request.location,
                     request.time)


def parse_at_line(line: bytes) -> AtRecord | None:
    """Parse an AT line as stored or flooded between peers; None if malformed."""
    m = _AT_LINE_RE.fullmatch(line)
    if m is None:
        return _parse_at_fields(line)
    server, skew, client_id, location_field, lat, lon, time_field, seconds, fraction = m.groups()
    known = _node_names.get(server)  # (_is_node_name's table, without its call)
    if not (known if known is not None else _is_node_name(server)):
        return None
    ns = int(seconds + fraction.ljust(9, b"0")) if fraction else int(seconds) * NS_PER_S
    return _new(AtRecord, (server, skew, client_id, _new(Location, (location_field, lat, lon)),
                           _new(ClientTime, (time_field, ns)), line))  # the match: line has the made form


def _parse_at_fields(line: bytes) -> AtRecord | None:
    """parse_at_line for any white space between the fields."""
    fields = line.split()
    if len(fields) != 6 or fields[0] != b"AT":
        return None
    _, server, skew, client_id, location_field, time_field = fields
    location = parse_location(location_field)
    client_time = parse_client_time(time_field)
    if (
        location is None
        or client_time is None
        or _SKEW_RE.fullmatch(skew) is None
        or len(client_id) > MAX_CLIENT_ID_BYTES
        or not _is_node_name(server)
    ):
        return None
    return at_record(server, skew, client_id, location, client_time)


_node_names: dict[bytes, bool] = {}  # answers of _is_node_name: a herd has a few names


def _is_node_name(server: bytes) -> bool:
    """What a config allows as a node name (config.loader): printable UTF-8,
    no white space, at most MAX_NODE_NAME_BYTES."""
    known = _node_names.get(server)
    if known is not None:
        return known
    if len(server) > MAX_NODE_NAME_BYTES:
        return False
    try:
        valid = server.decode().isprintable()
    except UnicodeDecodeError:
        valid = False
    if len(_node_names) >= 256:
        _node_names.clear()  # names sent by a broken peer: keep the table small
    _node_names[server] = valid
    return valid


def squeeze_newlines(text: str) -> str:
    """Every run of two or more newlines becomes one; trailing newlines go."""
    return re.sub(r"\n{2,}", "\n", text).rstrip("\n")


def format_whatsat_reply(at_line: bytes, answer: dict[str, Any], limit: int) -> bytes:
    """The WHATSAT reply: stored AT line, newline, places JSON cut to ``limit``
    results, then an empty line (the reply ends with ``\\n\\n``)."""
    body = dict(answer)
    body["results"] = list(answer.get("results", []))[:limit]
    # allow_nan=False: NaN or an infinity (a float too large for a double)
    # raises ValueError rather than leaving the reply invalid JSON.
    text = squeeze_newlines(json.dumps(body, indent=3, ensure_ascii=False, allow_nan=False))
    # A lone surrogate (no UTF-8 form) becomes its JSON escape, \udXXX.
    return at_line + b"\n" + text.encode("utf-8", "backslashreplace") + b"\n\n"


def too_long_reply(limit: int) -> bytes:
    """The one reply to a line longer than ``limit`` bytes (SPEC 1; the
    connection closes after it), with its line terminator."""
    return b"? line too long (limit %d bytes)\n" % limit
