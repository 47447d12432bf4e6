"""herd.wire.lines.LineProtocol: line framing (SPEC section 1, first paragraph and Errors).

A line ends with ``\\n``; one trailing ``\\r`` is dropped. A line longer than the
limit (terminator excluded) is reported once and nothing after it is read. An
unterminated last line counts as a line when the client half-closes.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport

from herd.wire.lines import LineProtocol

PROPS = settings(max_examples=300, deadline=None)


class Lines(LineProtocol):
    """Collects what the framing delivers."""

    def __init__(self, max_line: int = 4096, stop_after: bytes | None = None) -> None:
        self.max_line = max_line
        self.lines: list[bytes] = []
        self.too_long = 0
        self.stop_after = stop_after

    def line_received(self, line: bytes) -> None:
        assert not self.too_long, "a line was delivered after line_too_long"
        self.lines.append(line)
        if line == self.stop_after:
            self.stop_reading()

    def line_too_long(self) -> None:
        self.too_long += 1


def feed(*chunks: bytes, max_line: int = 4096) -> Lines:
    proto = Lines(max_line)
    for chunk in chunks:
        proto.dataReceived(chunk)
    return proto


# -- framing -------------------------------------------------------------------


def test_lines_end_with_newline() -> None:
    assert feed(b"one\ntwo\n").lines == [b"one", b"two"]


def test_an_unterminated_line_waits_for_its_newline() -> None:
    proto = feed(b"one\ntw")
    assert proto.lines == [b"one"]
    proto.dataReceived(b"o\n")
    assert proto.lines == [b"one", b"two"]


def test_one_trailing_carriage_return_is_dropped() -> None:
    assert feed(b"a\r\n").lines == [b"a"]
    assert feed(b"a\r\r\n").lines == [b"a\r"]
    assert feed(b"\r\n").lines == [b""]
    assert feed(b"a\rb\n").lines == [b"a\rb"]  # only a trailing one


def test_empty_lines_are_delivered_for_the_caller_to_ignore() -> None:
    assert feed(b"\n\n \n").lines == [b"", b"", b" "]


def test_bytes_are_delivered_untouched() -> None:
    data = bytes(b for b in range(256) if b != ord("\n"))
    assert feed(data + b"\n").lines == [data.removesuffix(b"\r")]


def test_a_line_split_across_chunks_byte_by_byte() -> None:
    data = b"IAMAT kiwi +1+2 3\r\nWHATSAT kiwi 10 5\n"
    proto = feed(*[data[i : i + 1] for i in range(len(data))])
    assert proto.lines == [b"IAMAT kiwi +1+2 3", b"WHATSAT kiwi 10 5"]


def test_crlf_split_between_chunks() -> None:
    assert feed(b"abc\r", b"\n").lines == [b"abc"]
    assert feed(b"abc", b"\r", b"\n", b"def\r", b"\r\n").lines == [b"abc", b"def\r"]


def test_works_over_a_string_transport() -> None:
    proto = Lines()
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(b"hello\r\nwor")
    proto.dataReceived(b"ld\n")
    assert proto.lines == [b"hello", b"world"]
    assert transport.value() == b""


# -- the line length limit ---------------------------------------------------------

LIMIT = 16


def test_a_line_of_exactly_the_limit_is_delivered() -> None:
    line = b"x" * LIMIT
    assert feed(line + b"\n", max_line=LIMIT).lines == [line]
    assert feed(line + b"\r\n", max_line=LIMIT).lines == [line]
    proto = feed(line, b"\r", b"\n", max_line=LIMIT)
    assert (proto.lines, proto.too_long) == ([line], 0)


def test_the_default_limit_is_4096_bytes() -> None:
    ok, too_long = b"x" * 4096, b"x" * 4097
    assert feed(ok + b"\r\n").lines == [ok]
    proto = feed(too_long + b"\n")
    assert (proto.lines, proto.too_long) == ([], 1)


def test_a_line_over_the_limit_is_reported_once_and_ends_reading() -> None:
    proto = feed(b"ok\n" + b"x" * (LIMIT + 1) + b"\nafter\n", max_line=LIMIT)
    assert proto.lines == [b"ok"]
    assert proto.too_long == 1
    proto.dataReceived(b"more\n" + b"y" * 100 + b"\n")
    proto.flush_partial_line()
    assert proto.lines == [b"ok"]
    assert proto.too_long == 1


def test_only_one_carriage_return_is_dropped_before_the_length_check() -> None:
    # LIMIT bytes + \r\r: one \r is dropped, the other makes the line LIMIT + 1 bytes.
    proto = feed(b"x" * LIMIT + b"\r\r\n", max_line=LIMIT)
    assert (proto.lines, proto.too_long) == ([], 1)


def test_a_partial_line_over_the_limit_is_reported_before_its_newline() -> None:
    proto = feed(b"ok\n" + b"x" * LIMIT, max_line=LIMIT)
    assert (proto.lines, proto.too_long) == ([b"ok"], 0)
    proto.dataReceived(b"x")
    assert (proto.lines, proto.too_long) == ([b"ok"], 1)
    proto.dataReceived(b"\nlater\n")
    assert (proto.lines, proto.too_long) == ([b"ok"], 1)


def test_a_partial_line_of_limit_plus_a_carriage_return_may_still_be_a_line() -> None:
    proto = feed(b"x" * LIMIT + b"\r", max_line=LIMIT)
    assert proto.too_long == 0
    proto.dataReceived(b"\n")
    assert (proto.lines, proto.too_long) == ([b"x" * LIMIT], 0)


def test_a_partial_line_of_limit_plus_a_carriage_return_and_more_is_too_long() -> None:
    proto = feed(b"x" * LIMIT + b"\r", b"y", max_line=LIMIT)
    assert (proto.lines, proto.too_long) == ([], 1)


def test_a_huge_chunk_without_newline_is_too_long_at_once() -> None:
    proto = feed(b"z" * 100_000, max_line=LIMIT)
    assert (proto.lines, proto.too_long) == ([], 1)


# -- stopping and half-close -----------------------------------------------------


def test_stop_reading_from_line_received_drops_the_rest() -> None:
    proto = Lines(stop_after=b"QUIT")
    proto.dataReceived(b"a\nQUIT\nb\nc")
    proto.dataReceived(b"\nd\n")
    proto.flush_partial_line()
    assert proto.lines == [b"a", b"QUIT"]
    assert proto.too_long == 0


def test_flush_partial_line_delivers_an_unterminated_last_line() -> None:
    proto = feed(b"one\ntwo")
    proto.flush_partial_line()
    assert proto.lines == [b"one", b"two"]


def test_flush_partial_line_drops_one_trailing_carriage_return() -> None:
    for data, last in [(b"two\r", b"two"), (b"two\r\r", b"two\r"), (b"\r", b"")]:
        proto = feed(data)
        proto.flush_partial_line()
        assert proto.lines == [last]


def test_flush_partial_line_delivers_a_last_line_of_exactly_the_limit() -> None:
    for tail in (b"", b"\r"):
        proto = feed(b"x" * LIMIT + tail, max_line=LIMIT)
        proto.flush_partial_line()
        assert (proto.lines, proto.too_long) == ([b"x" * LIMIT], 0)


def test_flush_partial_line_with_nothing_pending_delivers_nothing() -> None:
    proto = feed(b"one\n")
    proto.flush_partial_line()
    proto.flush_partial_line()
    assert proto.lines == [b"one"]


def test_flush_partial_line_delivers_the_pending_line_only_once() -> None:
    proto = feed(b"one")
    proto.flush_partial_line()
    proto.flush_partial_line()
    assert proto.lines == [b"one"]


def test_unimplemented_callbacks_raise() -> None:
    proto = LineProtocol()
    with pytest.raises(NotImplementedError):
        proto.dataReceived(b"x\n")
    with pytest.raises(NotImplementedError):
        LineProtocol().line_too_long()


# -- any chunking gives the same result ----------------------------------------------


def model(data: bytes, max_line: int) -> tuple[list[bytes], int, bytes | None]:
    """The framing rules applied to the whole stream at once: (lines, too-long
    reports, the line a half-close would flush)."""
    *complete, rest = data.split(b"\n")
    lines: list[bytes] = []
    for line in complete:
        line = line.removesuffix(b"\r")
        if len(line) > max_line:
            return lines, 1, None
        lines.append(line)
    if len(rest.removesuffix(b"\r")) > max_line:
        return lines, 1, None
    return lines, 0, rest.removesuffix(b"\r") if rest else None


streams = st.lists(
    st.one_of(
        st.sampled_from([b"\n", b"\r", b"\r\n", b"\r\r\n", b"a", b"IAMAT x +1+2 3"]),
        st.binary(max_size=12),
    ),
    max_size=12,
).map(b"".join)


@st.composite
def chunkings(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.sets(st.integers(0, len(data)), max_size=8)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@PROPS
@given(streams, st.integers(0, 20), st.data())
def test_any_chunking_delivers_what_the_rules_say(data: bytes, max_line: int, draw: st.DataObject) -> None:
    chunks = draw.draw(chunkings(data))
    assert b"".join(chunks) == data
    proto = feed(*chunks, max_line=max_line)
    lines, too_long, pending = model(data, max_line)
    assert proto.lines == lines
    assert proto.too_long == too_long
    proto.flush_partial_line()
    assert proto.lines == lines + ([pending] if pending is not None else [])
    assert proto.too_long == too_long


@PROPS
@given(st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), max_size=8), st.data())
def test_any_chunking_of_crlf_lines_gives_back_the_lines(lines: list[bytes], draw: st.DataObject) -> None:
    data = b"".join(line + b"\r\n" for line in lines)
    proto = feed(*draw.draw(chunkings(data)), max_line=30)
    assert proto.lines == lines
    assert proto.too_long == 0


class Reads(Lines):
    """Collects the lines of each read as lines_received hands them over."""

    def __init__(self, max_line: int = 4096) -> None:
        super().__init__(max_line)
        self.reads: list[list[bytes]] = []

    def lines_received(self, lines: list[bytes]) -> None:
        self.reads.append(list(lines))
        super().lines_received(lines)


def test_a_read_of_whole_lines_is_handed_over_at_once() -> None:
    proto = Reads()
    proto.dataReceived(b"F a\nF b\nK c\npart")
    proto.dataReceived(b"ial\n")
    assert proto.reads == [[b"F a", b"F b", b"K c"], [b"partial"]]
    assert proto.lines == [b"F a", b"F b", b"K c", b"partial"]


@PROPS
@given(st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")), max_size=8),
       st.lists(st.integers(1, 20), max_size=6), st.booleans())
def test_reads_deliver_what_line_by_line_delivers(lines: list[bytes], cuts: list[int], crlf: bool) -> None:
    """Whatever the chunking, CRs and overlong lines, the lines delivered (with
    or without the whole-read path) are those line-by-line framing gives."""
    data = b"".join(line + (b"\r\n" if crlf else b"\n") for line in lines)
    chunks, at = [], 0
    for cut in cuts:
        chunks.append(data[at:at + cut])
        at += cut
    chunks.append(data[at:])
    reads, expected = Reads(max_line=8), Lines(max_line=8)
    for chunk in chunks:
        reads.dataReceived(chunk)
        for byte in range(len(chunk)):
            expected.dataReceived(chunk[byte:byte + 1])  # one byte a read: at most one line each
    assert (reads.lines, reads.too_long) == (expected.lines, expected.too_long)
