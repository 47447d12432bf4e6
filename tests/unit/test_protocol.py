"""herd.wire.client, read as SPEC section 1 (client protocol).

Every test states one rule of the spec. The property tests at the end check the
same rules on generated input against an independent oracle that uses exact
rational arithmetic (``fractions.Fraction``), never floats.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from herd.wire.client import (
    MAX_CLIENT_ID_BYTES,
    AtRecord,
    ClientTime,
    Iamat,
    Invalid,
    Location,
    Whatsat,
    format_skew,
    format_whatsat_reply,
    make_record,
    parse_at_line,
    parse_client_time,
    parse_location,
    parse_request,
    squeeze_newlines,
)

NS = 1_000_000_000
NOW = 1_700_000_000 * NS  # the node's clock in these tests
BOUND = 3600 * NS  # how far ahead of NOW a client-time may be
WS = b" \t\r\f\v"  # the spec's white space (a line never holds \n)

KIWI_IAMAT = b"IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503"
KIWI_AT = b"AT Clark +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503"
KIWI_RECEIVED = 1621464828_223371889  # 1621464827.959498503 s + 0.263873386 s

PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse(line: bytes, now: int = NOW, bound: int = BOUND):
    return parse_request(line, now, bound)


def iamat(line: bytes) -> Iamat:
    request = parse(line)
    assert isinstance(request, Iamat), request
    return request


def whatsat(line: bytes) -> Whatsat:
    request = parse(line)
    assert isinstance(request, Whatsat), request
    return request


def assert_invalid(line: bytes) -> None:
    result = parse(line)
    assert result == Invalid(line)
    assert result.reply == b"? " + line + b"\n"


# -- IAMAT: the example from the spec -----------------------------------------


def test_iamat_example_parses_into_its_fields() -> None:
    request = iamat(KIWI_IAMAT)
    assert request.line == KIWI_IAMAT
    assert request.client_id == b"kiwi.cs.ucla.edu"
    assert request.location == Location(b"+34.068930-118.445127", b"+34.068930", b"-118.445127")
    assert request.time == ClientTime(b"1621464827.959498503", 1621464827_959498503)


def test_iamat_example_makes_the_example_at_line() -> None:
    record = make_record(b"Clark", KIWI_RECEIVED, iamat(KIWI_IAMAT))
    assert record.line == KIWI_AT
    assert record.skew == b"+0.263873386"


# -- fields and white space ----------------------------------------------------


@pytest.mark.parametrize("sep", [b" ", b"\t", b"\r", b"\f", b"\v", b" \t\r\f\v", b"\t\t", b"   "])
def test_fields_are_separated_by_any_run_of_white_space(sep: bytes) -> None:
    line = sep.join([b"IAMAT", b"kiwi", b"+1+2", b"3"])
    request = iamat(line)
    assert (request.client_id, request.location.text, request.time.text) == (b"kiwi", b"+1+2", b"3")
    assert request.line == line


@pytest.mark.parametrize("lead, trail", [(b" ", b""), (b"", b"\t"), (b"\r\f", b"\v "), (b"\v", b"\r")])
def test_leading_and_trailing_white_space_is_ignored(lead: bytes, trail: bytes) -> None:
    line = lead + b"WHATSAT kiwi 10 5" + trail
    request = whatsat(line)
    assert (request.client_id, request.radius_km, request.limit) == (b"kiwi", Decimal(10), 5)
    assert request.line == line  # kept as received, white space included


@pytest.mark.parametrize("line", [b"", b" ", b"\t", b"\r", b"\f", b"\v", b" \t\r\f\v \t"])
def test_an_empty_or_all_white_space_line_is_ignored(line: bytes) -> None:
    assert parse(line) is None


@pytest.mark.parametrize("char", [b"\x00", b"\x1c", b"\x1f", b"\x85", b"\xa0"])
def test_other_bytes_are_not_white_space(char: bytes) -> None:
    assert parse(char) == Invalid(char)
    request = iamat(b"IAMAT a" + char + b"b +1+2 3")
    assert request.client_id == b"a" + char + b"b"


@pytest.mark.parametrize(
    "line",
    [
        b"IAMAT",
        b"IAMAT kiwi",
        b"IAMAT kiwi +1+2",
        b"IAMAT kiwi +1+2 3 extra",
        b"IAMAT kiwi +1 +2 3",  # latitude and longitude are one field
        b"WHATSAT",
        b"WHATSAT kiwi",
        b"WHATSAT kiwi 10",
        b"WHATSAT kiwi 10 5 extra",
    ],
)
def test_wrong_field_counts_are_invalid(line: bytes) -> None:
    assert_invalid(line)


@pytest.mark.parametrize(
    "line",
    [
        b"iamat kiwi +1+2 3",
        b"Iamat kiwi +1+2 3",
        b"whatsat kiwi 10 5",
        b"WhatsAt kiwi 10 5",
        b"AT Clark +0.263873386 kiwi +1+2 3",
        b"HELLO",
        b"IAMAT: kiwi +1+2 3",
        b"IAMATkiwi +1+2 3 4",
        b"\xff\xfe",
        b"?",
    ],
)
def test_unknown_command_words_are_invalid(line: bytes) -> None:
    assert_invalid(line)


def test_invalid_reply_is_the_line_byte_for_byte() -> None:
    line = b"\t FOO \xff\xfe\x00 bar\r\x0b "
    result = parse(line)
    assert isinstance(result, Invalid)
    assert result.line == line
    assert result.reply == b"? \t FOO \xff\xfe\x00 bar\r\x0b \n"


# -- client-id -----------------------------------------------------------------


def test_client_id_may_be_256_bytes() -> None:
    client_id = b"x" * MAX_CLIENT_ID_BYTES
    assert MAX_CLIENT_ID_BYTES == 256
    assert iamat(b"IAMAT " + client_id + b" +1+2 3").client_id == client_id
    assert whatsat(b"WHATSAT " + client_id + b" 10 5").client_id == client_id


def test_client_id_of_257_bytes_is_invalid() -> None:
    client_id = b"x" * 257
    assert_invalid(b"IAMAT " + client_id + b" +1+2 3")
    assert_invalid(b"WHATSAT " + client_id + b" 10 5")


def test_client_id_counts_bytes_not_characters() -> None:
    ok = "é".encode() * 128  # 128 characters, 256 bytes
    too_long = ok + b"x"  # 129 characters, 257 bytes
    assert iamat(b"IAMAT " + ok + b" +1+2 3").client_id == ok
    assert_invalid(b"IAMAT " + too_long + b" +1+2 3")


def test_client_id_need_not_be_utf8() -> None:
    client_id = b"\xff\xfe\x80caf\xe9\x00"
    assert iamat(b"IAMAT " + client_id + b" +1+2 3").client_id == client_id
    assert whatsat(b"WHATSAT " + client_id + b" 1 1").client_id == client_id


# -- location ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, lat, lon",
    [
        (b"+34.068930-118.445127", b"+34.068930", b"-118.445127"),
        (b"+10.5-020.25", b"+10.5", b"-020.25"),
        (b"+90+180", b"+90", b"+180"),
        (b"-90.000-180.0", b"-90.000", b"-180.0"),
        (b"+90.0000000000+180.00000000000", b"+90.0000000000", b"+180.00000000000"),
        (b"-0+0", b"-0", b"+0"),
        (b"+000000089.9-000179.999999999999", b"+000000089.9", b"-000179.999999999999"),
    ],
)
def test_valid_locations_are_kept_verbatim(text: bytes, lat: bytes, lon: bytes) -> None:
    location = iamat(b"IAMAT kiwi " + text + b" 3").location
    assert location == Location(text, lat, lon)
    assert parse_location(text) == location


@pytest.mark.parametrize(
    "text",
    [
        b"34.0-118.0",  # latitude without a sign
        b"+34.0118.0",  # longitude without a sign
        b"+34.0",  # no longitude
        b"+34.0-",
        b"+91.0+000.0",  # |lat| > 90
        b"-91+0",
        b"+90.0000000001+0",
        b"+0+180.0000001",  # |lon| > 180
        b"+0-181",
        b"+1.-2",  # a dot needs digits after it
        b"+.5+2",  # and before it
        b"+1+.5",
        b"+1e5+0",
        b"+1E1+0",
        b"+nan+0",
        b"+inf+0",
        b"+0+nan",
        b"++1+2",
        b"+-1+2",
        b"+1+2+3",
        b"+1,5+2",
        b"+1_0+2",
        b"+\xd9\xa1+2",  # ARABIC-INDIC DIGIT ONE is not [0-9]
        b"+1+2 ",
        b"",
    ],
)
def test_invalid_locations(text: bytes) -> None:
    assert parse_location(text) is None
    if text and text == text.strip():
        assert_invalid(b"IAMAT kiwi " + text + b" 3")


@pytest.mark.parametrize(
    "text",
    [
        b"+90.0000000000000000000000000001+0",
        b"-90.00000000000000000000000000001+0",
        b"+0-180.0000000000000000000000000001",
    ],
)
def test_out_of_range_coordinates_with_many_digits_are_invalid(text: bytes) -> None:
    assert parse_location(text) is None


# -- client-time ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text, ns",
    [
        (b"1621464827.959498503", 1621464827_959498503),
        (b"1621464827", 1621464827_000000000),
        (b"1621464827.5", 1621464827_500000000),
        (b"1621464827.000000001", 1621464827_000000001),
        (b"0", 0),
        (b"0.0", 0),
        (b"0001621464827.50", 1621464827_500000000),  # leading zeros are fine
        (b"000", 0),
    ],
)
def test_valid_client_times_are_kept_verbatim_and_valued_in_ns(text: bytes, ns: int) -> None:
    expected = ClientTime(text, ns)
    assert parse_client_time(text) == expected
    assert iamat(b"IAMAT kiwi +1+2 " + text).time == expected


@pytest.mark.parametrize(
    "text",
    [
        b"1.",
        b".5",
        b"-1",
        b"+1",
        b"1e9",
        b"1E9",
        b"1.0123456789",  # ten fractional digits
        b"1621464827.9594985030",
        b"1..5",
        b"1.5.",
        b"nan",
        b"inf",
        b"1_000",
        b"0x10",
        b"\xd9\xa1",
        b"",
    ],
)
def test_invalid_client_times(text: bytes) -> None:
    assert parse_client_time(text) is None
    if text:
        assert_invalid(b"IAMAT kiwi +1+2 " + text)


def test_client_time_exactly_at_the_future_bound_is_valid() -> None:
    request = parse(b"IAMAT kiwi +1+2 1700003600", NOW, BOUND)
    assert isinstance(request, Iamat)
    assert request.time.ns == NOW + BOUND


def test_client_time_one_ns_past_the_future_bound_is_invalid() -> None:
    line = b"IAMAT kiwi +1+2 1700003600.000000001"
    assert parse(line, NOW, BOUND) == Invalid(line)
    assert isinstance(parse(line, NOW + 1, BOUND), Iamat)  # a clock 1 ns later accepts it
    assert isinstance(parse(line, NOW, BOUND + 1), Iamat)  # and so does a bound 1 ns wider


def test_client_times_in_the_past_are_valid_however_old() -> None:
    assert iamat(b"IAMAT kiwi +1+2 0").time.ns == 0
    assert iamat(b"IAMAT kiwi +1+2 1.000000001").time.ns == NS + 1


def test_a_client_time_with_absurdly_many_digits_is_invalid_not_an_error() -> None:
    line = b"IAMAT kiwi +1+2 " + b"9" * 5000
    assert parse(line, NOW, 10**10000) == Invalid(line)


def test_client_times_differing_in_the_ninth_digit_differ_by_one_ns() -> None:
    a = parse_client_time(b"1621464827.959498503")
    b = parse_client_time(b"1621464827.959498504")
    assert a is not None and b is not None
    assert b.ns - a.ns == 1


# -- WHATSAT -------------------------------------------------------------------


def test_whatsat_example() -> None:
    request = whatsat(b"WHATSAT kiwi.cs.ucla.edu 10 5")
    assert request == Whatsat(b"WHATSAT kiwi.cs.ucla.edu 10 5", b"kiwi.cs.ucla.edu", Decimal(10), 5)
    assert request.radius_m == 10_000


@pytest.mark.parametrize(
    "radius, km",
    [
        (b"50", Decimal(50)),
        (b"50.0000000", Decimal(50)),
        (b"0.001", Decimal("0.001")),
        (b"050", Decimal(50)),
        (b"1", Decimal(1)),
        (b"49.999999999999999999999999999999999", Decimal("49.999999999999999999999999999999999")),
        (b"0.000000000000000000000000000000001", Decimal("1e-33")),
    ],
)
def test_valid_radius(radius: bytes, km: Decimal) -> None:
    assert whatsat(b"WHATSAT kiwi " + radius + b" 5").radius_km == km


@pytest.mark.parametrize(("radius", "metres"), [
    (b"10", "10000"), (b"0.5", "500"), (b"1.25", "1250"), (b"050", "50000"), (b"0.001", "1"),
    (b"1.0005", "1000.5"), (b"1.0000000000000000000000000000001", "1000.0000000000000000000000000001"),
    (b"12.3456789012345678901234567890123", "12345.6789012345678901234567890123"),
])
def test_a_radius_in_metres_keeps_every_digit(radius: bytes, metres: str) -> None:
    """Found by a review: metres were rounded to 28 digits (1.0000...1 km asked 1000 m)."""
    from herd.places.provider import radius_text

    assert radius_text(whatsat(b"WHATSAT kiwi " + radius + b" 5").radius_m) == metres


@pytest.mark.parametrize(
    "radius",
    [
        b"0",
        b"0.0",
        b"000.000",
        b"50.0000001",
        b"50.000000000000000000000000000000001",
        b"51",
        b"100",
        b"-1",
        b"+1",
        b".5",
        b"5.",
        b"1e1",
        b"nan",
        b"inf",
        b"1,5",
    ],
)
def test_invalid_radius(radius: bytes) -> None:
    assert_invalid(b"WHATSAT kiwi " + radius + b" 5")


def test_a_long_but_valid_radius_is_valid() -> None:
    radius = b"1." + b"0" * 63  # 65 bytes, value 1
    assert whatsat(b"WHATSAT kiwi " + radius + b" 5").radius_km == 1


@pytest.mark.parametrize(
    "count, limit", [(b"1", 1), (b"20", 20), (b"007", 7), (b"020", 20), (b"0" * 30 + b"1", 1)]
)
def test_valid_count(count: bytes, limit: int) -> None:
    assert whatsat(b"WHATSAT kiwi 10 " + count).limit == limit


@pytest.mark.parametrize(
    "count", [b"0", b"00", b"21", b"100", b"-1", b"+1", b"1.0", b"1.", b"1e1", b"9" * 50, b"\xd9\xa1"]
)
def test_invalid_count(count: bytes) -> None:
    assert_invalid(b"WHATSAT kiwi 10 " + count)


# -- the AT line: skew ---------------------------------------------------------


@pytest.mark.parametrize(
    "delta_ns, text",
    [
        (263873386, b"+0.263873386"),
        (-NS, b"-1.000000000"),
        (0, b"+0.000000000"),
        (1, b"+0.000000001"),
        (-1, b"-0.000000001"),
        (-NS // 2, b"-0.500000000"),
        (-(3 * NS + 1), b"-3.000000001"),
        (10**18 + 1, b"+1000000000.000000001"),
        (-(10**30), b"-1000000000000000000000.000000000"),
    ],
)
def test_format_skew_is_signed_with_nine_fractional_digits(delta_ns: int, text: bytes) -> None:
    assert format_skew(delta_ns) == text


def test_make_record_skew_is_receive_time_minus_client_time_exactly() -> None:
    early = iamat(b"IAMAT kiwi +1+2 1621464827.959498503")
    late = iamat(b"IAMAT kiwi +1+2 1621464827.959498504")
    assert make_record(b"S", KIWI_RECEIVED, early).skew == b"+0.263873386"
    assert make_record(b"S", KIWI_RECEIVED, late).skew == b"+0.263873385"
    assert make_record(b"S", 1621464827_959498503, early).skew == b"+0.000000000"
    assert make_record(b"S", 1621464827_959498503, late).skew == b"-0.000000001"
    assert make_record(b"S", 0, early).skew == b"-1621464827.959498503"


def test_make_record_keeps_the_clients_fields_verbatim() -> None:
    line = b"IAMAT \xffkiwi +010.50-020.250 0001621464827.900"
    record = make_record(b"Clark", 1621464828 * NS, iamat(line))
    assert record.line == b"AT Clark +0.100000000 \xffkiwi +010.50-020.250 0001621464827.900"


# -- parsing AT lines ----------------------------------------------------------


def test_parse_at_line_round_trips_the_example() -> None:
    record = parse_at_line(KIWI_AT)
    assert record == AtRecord(
        b"Clark",
        b"+0.263873386",
        b"kiwi.cs.ucla.edu",
        Location(b"+34.068930-118.445127", b"+34.068930", b"-118.445127"),
        ClientTime(b"1621464827.959498503", 1621464827_959498503),
        KIWI_AT,
    )
    assert record.line == KIWI_AT


def test_parse_at_line_accepts_any_node_name_a_config_can_hold() -> None:
    for server in ("C" * 256, "Jaquez-2", "Zoë"):
        record = parse_at_line(KIWI_AT.replace(b"Clark", server.encode()))
        assert record is not None and record.server == server.encode()


def test_parse_at_line_accepts_any_white_space_between_fields() -> None:
    record = parse_at_line(
        b" AT\tClark\v+0.263873386\fkiwi.cs.ucla.edu\r+34.068930-118.445127  1621464827.959498503 "
    )
    assert record is not None and record.line == KIWI_AT


@pytest.mark.parametrize(
    "line",
    [
        KIWI_AT.replace(b"+0.263873386", b"+0.26387338"),  # 8 fractional digits
        KIWI_AT.replace(b"+0.263873386", b"+0.2638733861"),  # 10
        KIWI_AT.replace(b"+0.263873386", b"0.263873386"),  # no sign
        KIWI_AT.replace(b"+0.263873386", b"+.263873386"),
        KIWI_AT.replace(b"+0.263873386", b"+0263873386"),
        KIWI_AT.replace(b"+0.263873386", b"+1e0.000000000"),
        KIWI_AT.replace(b"+34.068930-118.445127", b"34.068930-118.445127"),
        KIWI_AT.replace(b"+34.068930-118.445127", b"+91-118"),
        KIWI_AT.replace(b"1621464827.959498503", b"1621464827.9594985030"),
        KIWI_AT.replace(b"1621464827.959498503", b"-1"),
        KIWI_AT.replace(b"kiwi.cs.ucla.edu", b"k" * 257),
        KIWI_AT.replace(b"Clark", b"C" * 257),  # no node is named so (config.loader)
        KIWI_AT.replace(b"Clark", b"Cl\xffrk"),
        KIWI_AT.replace(b"Clark", b"Cl\x1b[2Jark"),
        KIWI_AT.replace(b"AT ", b"at "),
        KIWI_AT.replace(b"AT ", b"IAMAT "),
        KIWI_AT + b" extra",  # seven fields
        KIWI_AT.replace(b"Clark ", b""),  # five
        b"AT",
        b"",
        b"   ",
    ],
)
def test_parse_at_line_rejects_malformed_lines(line: bytes) -> None:
    assert parse_at_line(line) is None


# -- WHATSAT reply -------------------------------------------------------------


def places(n: int, note: str = "") -> dict:
    return {
        "html_attributions": [],
        "results": [{"name": f"place {i}{note}", "rating": 4.5, "types": ["a", "b"]} for i in range(n)],
        "status": "OK",
        "next_page_token": "token",
    }


def split_reply(reply: bytes) -> tuple[bytes, bytes]:
    head, sep, body = reply.partition(b"\n")
    assert sep
    assert body.endswith(b"\n\n")
    return head, body[:-2]


def test_whatsat_reply_is_at_line_newline_json_empty_line() -> None:
    reply = format_whatsat_reply(KIWI_AT, places(3), 5)
    assert reply.startswith(KIWI_AT + b"\n{")
    assert reply.endswith(b"}\n\n")
    assert not reply.endswith(b"\n\n\n")
    head, body = split_reply(reply)
    assert head == KIWI_AT
    assert json.loads(body) == places(3)


@pytest.mark.parametrize("limit, kept", [(1, 1), (2, 2), (5, 5), (20, 5)])
def test_whatsat_reply_cuts_results_to_the_limit(limit: int, kept: int) -> None:
    answer = places(5)
    _, body = split_reply(format_whatsat_reply(KIWI_AT, answer, limit))
    parsed = json.loads(body)
    assert parsed["results"] == answer["results"][:kept]
    assert {k: v for k, v in parsed.items() if k != "results"} == {
        "html_attributions": [],
        "status": "OK",
        "next_page_token": "token",
    }
    assert len(answer["results"]) == 5  # the caller's answer is not changed


def test_whatsat_reply_without_results_has_an_empty_list() -> None:
    _, body = split_reply(
        format_whatsat_reply(KIWI_AT, {"html_attributions": [], "status": "ZERO_RESULTS"}, 5)
    )
    assert json.loads(body) == {"html_attributions": [], "results": [], "status": "ZERO_RESULTS"}


def test_whatsat_reply_json_has_no_blank_lines_even_when_strings_hold_newlines() -> None:
    answer = places(4, note="\n\n\nline\n\n")
    answer["html_attributions"] = ["a\n\n\nb", "\n"]
    reply = format_whatsat_reply(KIWI_AT, answer, 20)
    _, body = split_reply(reply)
    assert b"\n\n" not in body
    assert not body.endswith(b"\n")
    assert json.loads(body) == answer  # the strings survive, their newlines escaped


def test_whatsat_reply_never_emits_invalid_json() -> None:
    # Found by a black-box audit: an answer holding a float too large for a
    # double (1e400 parses as inf) came out as "Infinity", and a lone
    # surrogate as "?".
    answer = places(1)
    answer["results"][0]["rating"] = float("inf")
    with pytest.raises(ValueError):
        format_whatsat_reply(KIWI_AT, answer, 20)
    _, body = split_reply(format_whatsat_reply(KIWI_AT, places(1, note="bad \ud800 x"), 20))
    assert b"bad \\ud800 x" in body and json.loads(body) == places(1, note="bad \ud800 x")


def test_whatsat_reply_keeps_non_ascii_text() -> None:
    answer = places(1, note=" café 東京")
    _, body = split_reply(format_whatsat_reply(KIWI_AT, answer, 20))
    assert json.loads(body.decode("utf-8")) == answer


@pytest.mark.parametrize(
    "text, squeezed",
    [
        ("", ""),
        ("a", "a"),
        ("a\nb", "a\nb"),
        ("a\n\nb", "a\nb"),
        ("a\n\n\n\n\nb\n\nc", "a\nb\nc"),
        ("a\n", "a"),
        ("a\n\n\n", "a"),
        ("\n\na", "\na"),
        ("\n", ""),
        ("a\r\n\r\nb", "a\r\n\r\nb"),  # only runs of \n itself
        ("a\n \nb", "a\n \nb"),
    ],
)
def test_squeeze_newlines(text: str, squeezed: str) -> None:
    assert squeeze_newlines(text) == squeezed


# -- property tests: strategies -------------------------------------------------

ws_byte = st.sampled_from([bytes([c]) for c in WS])
ws_run = st.lists(ws_byte, min_size=1, max_size=4).map(b"".join)
opt_ws_run = st.lists(ws_byte, min_size=0, max_size=3).map(b"".join)

NON_WS = [c for c in range(256) if c not in WS and c != ord("\n")]
client_ids = st.binary(min_size=1, max_size=256).map(lambda b: bytes(NON_WS[c % len(NON_WS)] for c in b))
# What a config allows as a node name: printable, no white space, <= 256 bytes UTF-8.
node_names = st.text(st.characters(categories=("L", "N", "P", "S")), min_size=1, max_size=64).filter(
    lambda s: s.isprintable() and not any(c.isspace() for c in s)).map(str.encode)


def digit_text(min_size: int, max_size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet="0123456789", min_size=min_size, max_size=max_size)


@st.composite
def coordinates(draw: st.DrawFn, limit: int) -> bytes:
    """A valid signed decimal in [-limit, limit], with random digit counts."""
    sign = draw(st.sampled_from("+-"))
    whole = draw(st.integers(0, limit))
    zeros = "0" * draw(st.integers(0, 3))
    fraction = draw(digit_text(0, 14))
    if whole == limit:
        fraction = "0" * len(fraction)
    return f"{sign}{zeros}{whole}{'.' + fraction if fraction else ''}".encode()


locations = st.tuples(coordinates(90), coordinates(180))


@st.composite
def time_texts(draw: st.DrawFn, max_seconds: int = 1_700_000_000) -> bytes:
    seconds = draw(st.integers(0, max_seconds))
    zeros = "0" * draw(st.integers(0, 2))
    fraction = draw(digit_text(0, 9))
    return f"{zeros}{seconds}{'.' + fraction if fraction else ''}".encode()


@st.composite
def valid_iamats(draw: st.DrawFn) -> tuple[bytes, bytes, tuple[bytes, bytes], bytes]:
    client_id = draw(client_ids)
    location = draw(locations)
    time = draw(time_texts())
    return b" ".join((b"IAMAT", client_id, b"".join(location), time)), client_id, location, time


# Tokens for lines that are near-valid in every way the spec describes: mostly
# well-formed values with ranges just past the limits, plus malformed ones.
wild_coordinate = st.builds(
    lambda sign, whole, dot, fraction: sign + whole + dot + fraction,
    st.sampled_from([b"+", b"-", b"", b"*"]),
    st.sampled_from([b"0", b"00", b"1", b"89", b"90", b"91", b"179", b"180", b"181", b"", b"1e5", b"nan"]),
    st.sampled_from([b"", b".", b"."]),
    digit_text(0, 12).map(str.encode),
)
any_location = st.one_of(
    st.tuples(coordinates(90), coordinates(180)).map(b"".join),
    st.tuples(coordinates(91), coordinates(181)).map(b"".join),
    st.tuples(wild_coordinate, wild_coordinate).map(b"".join),
    wild_coordinate,
)
wild_time = st.builds(
    lambda sign, seconds, dot, fraction: sign + seconds + dot + fraction,
    st.sampled_from([b"", b"", b"", b"+", b"-"]),
    st.sampled_from([b"0", b"1", b"1700003599", b"1700003600", b"1700003601", b"01621464827", b""]),
    st.sampled_from([b"", b".", b"."]),
    digit_text(0, 11).map(str.encode),
)
any_time = st.one_of(
    time_texts(max_seconds=1_700_004_000),
    st.sampled_from(
        [b"1700003600", b"1700003600.0", b"1700003600.000000001", b"1700003599.999999999", b"1.0123456789"]
    ),
    wild_time,
)
wild_radius = st.builds(
    lambda whole, dot, fraction: whole + dot + fraction,
    st.sampled_from([b"0", b"00", b"1", b"49", b"50", b"050", b"51", b"", b"-1", b"+1"]),
    st.sampled_from([b"", b".", b"."]),
    digit_text(0, 10).map(str.encode),
)
any_radius = st.one_of(
    st.builds(
        lambda whole, fraction: str(whole).encode() + (b"." + fraction.encode() if fraction else b""),
        st.integers(0, 51),
        digit_text(0, 10),
    ),
    wild_radius,
)
any_count = st.one_of(
    st.builds(lambda zeros, n: b"0" * zeros + str(n).encode(), st.integers(0, 2), st.integers(0, 22)),
    st.sampled_from([b"-1", b"+1", b"1.0", b"", b"100", b"0" * 20 + b"5"]),
)
any_id = st.one_of(client_ids, st.integers(255, 258).map(lambda n: b"i" * n))
any_command = st.sampled_from([b"IAMAT", b"WHATSAT"] * 3 + [b"iamat", b"AT", b"FOO"])
any_field = st.one_of(any_id, any_location, any_time, any_radius, any_count)


@st.composite
def near_valid_lines(draw: st.DrawFn) -> bytes:
    command = draw(any_command)
    if draw(st.integers(0, 3)) > 0:  # mostly the right shape for the command
        shape = [any_id, any_location, any_time] if command == b"IAMAT" else [any_id, any_radius, any_count]
        fields = [draw(s) for s in shape]
        if draw(st.integers(0, 9)) == 0:
            fields = fields[: draw(st.integers(0, 2))] if draw(st.booleans()) else fields + [draw(any_field)]
    else:
        fields = draw(st.lists(any_field, max_size=5))
    parts = [command, *fields]
    line = draw(opt_ws_run)
    for i, part in enumerate(parts):
        line += part + (draw(ws_run) if i < len(parts) - 1 else b"")
    return line + draw(opt_ws_run)


# -- property tests: an independent oracle ---------------------------------------

_ORACLE_COORD = rb"[+-][0-9]+(?:\.[0-9]+)?"
_ORACLE_LOCATION = re.compile(rb"(" + _ORACLE_COORD + rb")(" + _ORACLE_COORD + rb")")


def oracle(line: bytes, now: int, bound: int) -> tuple | str | None:
    """SPEC section 1 restated with exact rationals: None, "invalid" or the request's values."""
    fields = [f for f in re.split(rb"[ \t\r\f\v]+", line) if f]
    if not fields:
        return None
    if len(fields) != 4 or len(fields[1]) > 256:
        return "invalid"
    command, client_id, a, b = fields
    if command == b"IAMAT":
        m = _ORACLE_LOCATION.fullmatch(a)
        if m is None or not re.fullmatch(rb"[0-9]+(\.[0-9]{1,9})?", b):
            return "invalid"
        lat, lon = m.groups()
        if abs(Fraction(lat.decode())) > 90 or abs(Fraction(lon.decode())) > 180:
            return "invalid"
        ns = Fraction(b.decode()) * NS
        assert ns.denominator == 1
        if ns - now > bound:
            return "invalid"
        return ("iamat", client_id, a, lat, lon, b, int(ns))
    if command == b"WHATSAT":
        if not re.fullmatch(rb"[0-9]+(\.[0-9]+)?", a) or not re.fullmatch(rb"[0-9]+", b):
            return "invalid"
        radius = Fraction(a.decode())
        if not 0 < radius <= 50 or not 1 <= int(b) <= 20:
            return "invalid"
        return ("whatsat", client_id, radius, int(b))
    return "invalid"


def observed(result: object) -> tuple | str | None:
    if result is None:
        return None
    if isinstance(result, Invalid):
        return "invalid"
    if isinstance(result, Iamat):
        loc = result.location
        return ("iamat", result.client_id, loc.text, loc.lat, loc.lon, result.time.text, result.time.ns)
    assert isinstance(result, Whatsat)
    return ("whatsat", result.client_id, Fraction(result.radius_km), result.limit)


# -- property tests ---------------------------------------------------------------


@PROPS
@given(st.binary(max_size=600))
def test_parse_request_never_raises_on_arbitrary_bytes(line: bytes) -> None:
    result = parse(line)
    assert result is None or isinstance(result, (Invalid, Iamat, Whatsat))
    if result is None:
        assert not line.split()
    else:
        assert result.line == line
    if isinstance(result, Invalid):
        assert result.reply == b"? " + line + b"\n"


@PROPS
@given(st.lists(st.one_of(any_field, any_command, st.binary(max_size=20)), max_size=6), st.data())
def test_parse_request_never_raises_on_shuffled_request_words(
    words: list[bytes], data: st.DataObject
) -> None:
    line = b"".join(w + data.draw(ws_run) for w in words)
    result = parse(line)
    assert result is None or result.line == line


@PROPS
@given(near_valid_lines())
def test_parse_request_agrees_with_the_spec_oracle(line: bytes) -> None:
    assert observed(parse(line)) == oracle(line, NOW, BOUND)


@PROPS
@given(valid_iamats(), st.integers(-(10**20), 10**20), node_names)
def test_valid_iamat_parses_and_its_at_line_round_trips(
    generated: tuple[bytes, bytes, tuple[bytes, bytes], bytes], offset_ns: int, server: bytes
) -> None:
    line, client_id, (lat, lon), time = generated
    request = iamat(line)
    assert request.client_id == client_id
    assert request.location == Location(lat + lon, lat, lon)
    assert request.time.text == time
    received = request.time.ns + offset_ns
    record = make_record(server, received, request)
    assert record.skew == format_skew(offset_ns)
    assert Fraction(record.skew.decode()) * NS == offset_ns
    assert parse_at_line(record.line) == record
    assert record.line == b" ".join((b"AT", server, record.skew, client_id, lat + lon, time))


@PROPS
@given(time_texts(max_seconds=10**12), time_texts(max_seconds=10**12))
def test_client_time_order_is_exact_decimal_order(a: bytes, b: bytes) -> None:
    ta, tb = parse_client_time(a), parse_client_time(b)
    assert ta is not None and tb is not None
    da, db = Decimal(a.decode()), Decimal(b.decode())
    assert (ta.ns < tb.ns) == (da < db)
    assert (ta.ns == tb.ns) == (da == db)
    assert Fraction(ta.ns, NS) == Fraction(a.decode())


@PROPS
@given(time_texts(max_seconds=10**12), st.integers(1, 9))
def test_changing_the_last_fractional_digit_moves_time_by_exact_ns(text: bytes, digits: int) -> None:
    seconds, _, fraction = text.partition(b".")
    base = seconds + b"." + (fraction + b"0" * 9)[:digits]
    bumped_value = Decimal(base.decode()) + Decimal(1).scaleb(-digits)
    bumped = f"{bumped_value:.{digits}f}".encode()
    t0, t1 = parse_client_time(base), parse_client_time(bumped)
    assert t0 is not None and t1 is not None
    assert t1.ns - t0.ns == 10 ** (9 - digits)


@PROPS
@given(valid_iamats(), st.data())
def test_white_space_variations_parse_to_the_same_request(
    generated: tuple[bytes, bytes, tuple[bytes, bytes], bytes], data: st.DataObject
) -> None:
    line = generated[0]
    fields = line.split(b" ")
    varied = data.draw(opt_ws_run) + b"".join(f + data.draw(ws_run) for f in fields[:-1]) + fields[-1]
    varied += data.draw(opt_ws_run)
    canonical, request = iamat(line), iamat(varied)
    assert request.line == varied
    assert (request.client_id, request.location, request.time) == (
        canonical.client_id,
        canonical.location,
        canonical.time,
    )


@PROPS
@given(client_ids, any_radius, any_count, st.data())
def test_whatsat_white_space_variations_parse_alike(
    client_id: bytes, radius: bytes, count: bytes, data: st.DataObject
) -> None:
    fields = [b"WHATSAT", client_id, radius or b"1", count or b"1"]
    canonical = parse(b" ".join(fields))
    varied = data.draw(opt_ws_run) + b"".join(f + data.draw(ws_run) for f in fields)
    result = parse(varied)
    if isinstance(canonical, Whatsat):
        assert isinstance(result, Whatsat)
        assert (result.client_id, result.radius_km, result.limit) == (
            canonical.client_id,
            canonical.radius_km,
            canonical.limit,
        )
    else:
        assert result == Invalid(varied)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | st.sampled_from(["\n", "\n\n", "a\n\n\nb", "\r\n\r\n"]),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)


@settings(PROPS, max_examples=100)
@given(
    st.lists(st.dictionaries(st.text(max_size=8), json_values, max_size=3), max_size=22),
    st.dictionaries(st.text(max_size=8).filter(lambda k: k != "results"), json_values, max_size=3),
    st.integers(1, 20),
)
def test_whatsat_reply_shape_for_any_answer(results: list[dict], extra: dict, limit: int) -> None:
    answer = {**extra, "results": results}
    reply = format_whatsat_reply(KIWI_AT, answer, limit)
    assert reply.endswith(b"\n\n") and not reply.endswith(b"\n\n\n")
    head, body = split_reply(reply)
    assert head == KIWI_AT
    assert b"\n\n" not in body
    assert json.loads(body) == {**extra, "results": results[:limit]}


any_skew = st.one_of(st.integers(-10**12, 10**12).map(format_skew),
                     st.sampled_from([b"+0.1", b"0.000000000", b"+1.0000000000", b"-", b"+x.000000000"]))
any_server = st.one_of(node_names, st.sampled_from([b"\xff", b"A\x00", b"x" * 257]))


@given(any_server, any_skew, client_ids, any_location, any_time,
       st.one_of(st.just(b" "), ws_run), st.booleans())
@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
def test_parse_at_line_fast_path_agrees_with_the_field_by_field_parse(
        server: bytes, skew: bytes, client_id: bytes, location: bytes, time_text: bytes, sep: bytes,
        prefix_at: bool) -> None:
    """parse_at_line matches the usual single-spaced line at once; whatever it
    accepts or refuses, it answers as splitting on white space does."""
    from herd.wire.client import _parse_at_fields

    line = sep.join([b"AT" if prefix_at else b"AX", server, skew, client_id, location, time_text])
    assert parse_at_line(line) == _parse_at_fields(line)


@given(st.one_of(client_ids, st.just(b"x" * 257)), any_location, any_time, st.one_of(st.just(b" "), ws_run),
       st.sampled_from([b"IAMAT", b"IAMATX"]), st.integers(0, 2 * 10**18))
@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
def test_parse_request_fast_path_agrees_with_the_field_by_field_parse(
        client_id: bytes, location: bytes, time_text: bytes, sep: bytes, command: bytes, now_ns: int) -> None:
    """parse_request matches the usual single-spaced IAMAT at once; whatever
    it accepts or refuses, it answers as splitting on white space does."""
    from herd.wire.client import _parse_iamat

    line = sep.join([command, client_id, location, time_text])
    fields = line.split()
    expected = (_parse_iamat(line, fields, now_ns, 3600 * 10**9) if fields[0] == b"IAMAT" and len(fields) == 4
                else Invalid(line))
    assert parse_request(line, now_ns, 3600 * 10**9) == expected
