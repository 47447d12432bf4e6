"""Live fuzz of one real node's I/O path: over ten thousand seeded random and
hostile lines (random bytes, non-UTF-8, NUL bytes, huge/tiny/exponent/nan/inf
numbers, overlong ids, valid lines with one field corrupted, CRLF variants,
lines of exactly 4096 bytes, AT lines and HERD-* handshake words with
garbage), sent in bursts and in odd-sized chunks over a few half-closed
connections, then over-long lines each on its own connection.

The oracle is ``herd.wire.client.parse_request``, used only to classify each line
as a valid IAMAT (reply ``AT Solo ...`` for exactly that id, location and
time), invalid (reply exactly ``? `` + the line) or blank (no reply); the
parsing rules themselves are tested in test_protocol.py. Checked here: the
node survives, every complete line gets exactly one reply, in order, and
Redis afterwards holds exactly the clients of the valid IAMATs sent.
"""

from __future__ import annotations

import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from cluster import Herd, talk

from herd.wire.client import Iamat, Invalid, Whatsat, parse_client_time, parse_request

SEED = 20240607
LINES = 10_400  # in the ordinary connections
CONNECTIONS = 8
LIMIT = 4096
MAX_FUTURE_NS = 3600 * 10**9
WS = (b" ", b"\t", b"\r", b"\x0b", b"\x0c")  # field separators (\n ends the line)
TOO_LONG = b"? line too long (limit 4096 bytes)\n"
ID_BYTES = bytes(b for b in range(256) if bytes([b]) not in WS + (b"\n",))
SKEW = re.compile(rb"[+-][0-9]+\.[0-9]{9}\Z")


@dataclass(frozen=True)
class Expect:
    """What one line must be answered: nothing, ``? <line>``, or an AT line."""

    line: bytes
    kind: str  # "blank", "invalid", "iamat"
    request: Iamat | None = None


@pytest.fixture(scope="module")
def solo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Herd]:
    herd = Herd(tmp_path_factory.mktemp("fuzz"), {"Solo": []}).start()
    try:
        yield herd
    finally:
        herd.stop()


# -- the corpus ---------------------------------------------------------------


class Corpus:
    """Seeded generators of hostile line contents (never containing ``\\n``)."""

    def __init__(self, rng: random.Random, now_ns: int):
        self.rng = rng
        self.now_s = now_ns // 10**9

    # fields --------------------------------------------------------------

    def ws(self) -> bytes:
        if self.rng.random() < 0.8:
            return b" "
        return b"".join(self.rng.choice(WS) for _ in range(self.rng.randint(1, 4)))

    def client_id(self) -> bytes:
        r = self.rng
        kind = r.randrange(6)
        if kind == 0:
            return b"c%d" % r.randrange(400)  # reused ids: updates overwrite each other
        if kind == 1:
            return bytes(r.choice(b"abcxyz.-_@:/0123456789") for _ in range(r.randint(1, 40)))
        if kind == 2:  # any non-white-space bytes: non-UTF-8, NUL, controls
            return bytes(r.choice(ID_BYTES) for _ in range(r.randint(1, 30)))
        if kind == 3:
            return b"\xff\xfe" + b"\xc3\x28" + b"%d" % r.randrange(50)  # invalid UTF-8
        if kind == 4:
            return b"x" * 255 + b"%d" % r.randrange(10)  # exactly 256 bytes
        return "é".encode() + bytes(r.choice(b"0123456789") for _ in range(r.randint(1, 8)))

    def coordinate(self, bound: int) -> bytes:
        r = self.rng
        whole = r.randint(0, bound - 1)
        text = b"%d" % whole
        if r.random() < 0.2:
            text = b"0" * r.randint(1, 5) + text
        if r.random() < 0.8:
            text += b"." + b"%d" % r.randrange(10) * r.randint(1, 12)
        return r.choice((b"+", b"-")) + text

    def location(self) -> bytes:
        if self.rng.random() < 0.05:
            return self.rng.choice((b"+90-180", b"-90.000+180.0", b"+00+000", b"-0.0-0.0"))
        return self.coordinate(90) + self.coordinate(180)

    def client_time(self) -> bytes:
        r = self.rng
        seconds = r.choice((r.randint(0, self.now_s), self.now_s - r.randint(0, 86400),
                            self.now_s + r.randint(0, 1800)))
        text = b"%d" % seconds
        if r.random() < 0.1:
            text = b"0" * r.randint(1, 40) + text
        if r.random() < 0.7:
            text += b"." + b"".join(b"%d" % r.randrange(10) for _ in range(r.randint(1, 9)))
        return text

    def bad_number(self) -> bytes:
        r = self.rng
        return r.choice((
            b"nan", b"NaN", b"-nan", b"inf", b"+inf", b"-inf", b"Infinity", b"1e9", b"1E+10",
            b"1.7e9", b"0x10", b"1_700_000_000", b"1,5", b".5", b"5.", b"-1", b"+1700000000",
            b"1.0000000001", b"\xd9\xa1\xd9\xa2", b"1" * r.randint(16, 400), b"9" * 16,
            b"%d" % (self.now_s + r.randint(7200, 10**9)), b"0." + b"0" * 30 + b"1",
            b"1" + b"\x00", b"\x00", b"", b"1.2.3", b"--1", b"\xff",
        ))

    def bad_location(self) -> bytes:
        r = self.rng
        n = self.bad_number()
        return r.choice((
            b"+91.0+000.0", b"+34.0", b"34.0-118.0", b"+nan+nan", b"+inf-inf", b"+1e2+1e2",
            b"+" + b"9" * r.randint(3, 300) + b"+0", b"+90.0000000001+0", b"+0+180.1", b"++1+1",
            b"+1+1+1", b"+1.-1", b"+1-" + n, b"+" + n + b"+1", b"-" + b"0" * 500 + b"1+1",
            b"+1\x00+1", b"+1 +1", b"+\xff+1",
        ))

    def iamat(self) -> bytes:
        fields = [b"IAMAT", self.client_id(), self.location(), self.client_time()]
        return self.join(fields)

    def join(self, fields: list[bytes]) -> bytes:
        out = self.ws() if self.rng.random() < 0.1 else b""
        out += self.ws().join(fields) if self.rng.random() < 0.3 else b" ".join(fields)
        return out + (self.ws() if self.rng.random() < 0.1 else b"")

    # lines ---------------------------------------------------------------

    def random_bytes(self) -> bytes:
        return self.rng.randbytes(self.rng.randint(1, 300)).replace(b"\n", b"")

    def non_utf8(self) -> bytes:
        r = self.rng
        junk = r.choice((b"\xc3\x28", b"\xa0\xa1", b"\xe2\x28\xa1", b"\xf0\x28\x8c\xbc", b"\xff",
                         b"\xed\xa0\x80", b"\xc0\xaf"))
        fields = [b"IAMAT", self.client_id(), self.location(), self.client_time()]
        i = r.randrange(4)
        fields[i] = fields[i][: r.randint(0, len(fields[i]))] + junk
        return self.join(fields)

    def with_nul(self) -> bytes:
        line = self.iamat()
        at = self.rng.randint(0, len(line))
        return line[:at] + b"\x00" * self.rng.randint(1, 3) + line[at:]

    def corrupted(self) -> bytes:
        """A valid-looking IAMAT with exactly one thing wrong."""
        r = self.rng
        fields = [b"IAMAT", self.client_id(), self.location(), self.client_time()]
        how = r.randrange(8)
        if how == 0:
            fields[0] = r.choice((b"iamat", b"IAMA", b"IAMATT", b"IAMAT\x00", b"\xef\xbc\xa9AMAT",
                                  b"I AMAT", b"WHATSAT", b"AT"))
        elif how == 1:
            fields[1] = b"o" * r.randint(257, 1000)  # overlong id
        elif how == 2:
            fields[2] = self.bad_location()
        elif how == 3:
            fields[3] = self.bad_number()
        elif how == 4:
            fields.append(r.choice((b"extra", self.client_time(), b"\x00")))
        elif how == 5:
            del fields[r.randrange(1, 4)]
        elif how == 6:
            i = r.randrange(4)
            f = bytearray(fields[i])
            if f:
                f[r.randrange(len(f))] = r.randrange(256)
            fields[i] = bytes(f).replace(b"\n", b"~")
        else:
            fields[3] = b"%d" % (self.now_s + r.randint(7200, 10**6))  # too far in the future
        return self.join(fields)

    def numbers(self) -> bytes:
        """Huge, tiny, exponent, nan/inf values in the numeric fields."""
        r = self.rng
        if r.random() < 0.5:
            return self.join([b"IAMAT", self.client_id(), self.location(), self.bad_number()])
        if r.random() < 0.5:
            return self.join([b"IAMAT", self.client_id(), self.bad_location(), self.client_time()])
        return self.join([b"WHATSAT", self.client_id(), self.bad_number(),
                          r.choice((self.bad_number(), b"0", b"21", b"-1", b"5.0", b"100"))])

    def peer_words(self) -> bytes:
        r = self.rng
        word = r.choice((b"HERD-HELLO", b"HERD-CHALLENGE", b"HERD-AUTH", b"HERD-OK"))
        nonce = bytes(r.choice(b"0123456789abcdef") for _ in range(32))
        rest = r.choice((
            b"", b"Bailey Solo " + nonce, b"Solo Solo " + nonce, b"Solo Bailey " + nonce,
            nonce + b" " + nonce, nonce, self.random_bytes(), b"\x00" * 5, b"Bailey Solo nonce",
        ))
        return self.join([word, rest]) if rest else word

    def at_line(self) -> bytes:
        r = self.rng
        fields = [b"AT", r.choice((b"Solo", b"Bailey", b"\xff")), b"+0.000000001", self.client_id(),
                  self.location(), self.client_time()]
        if r.random() < 0.5:
            i = r.randrange(len(fields))
            fields[i] = fields[i] + self.random_bytes()[:10]
        return self.join(fields)

    def blank(self) -> bytes:
        return self.rng.choice((b"", b" ", b"   ", b"\t", b"\x0b\x0c", b" \t \r", b"\r"))

    def exact_limit(self) -> bytes:
        """A line of exactly 4096 bytes: a padded valid IAMAT, junk, or ``? ``-bait."""
        r = self.rng
        kind = r.randrange(3)
        if kind == 0:
            fields = [b"IAMAT", self.client_id(), self.location(), self.client_time()]
            pad = LIMIT - len(b"".join(fields)) - 3
            cuts = sorted(r.randint(0, pad) for _ in range(2))
            gaps = [cuts[0] + 1, cuts[1] - cuts[0] + 1, pad - cuts[1] + 1]
            line = fields[0]
            for gap, f in zip(gaps, fields[1:], strict=True):
                line += b"".join(r.choice(WS) for _ in range(gap)) + f
            return line
        if kind == 1:
            return (r.randbytes(LIMIT).replace(b"\n", b"#"))
        return b"IAMAT " + b"q" * (LIMIT - 6)

    def whatsat_junk(self) -> bytes:
        r = self.rng
        return self.join([b"WHATSAT", self.client_id(), r.choice((b"0", b"50.0001", b"nan", b"1e1", b"-5")),
                          r.choice((b"5", b"0", b"21"))])

    def content(self) -> bytes:
        r = self.rng.random()
        table: list[tuple[float, Callable[[], bytes]]] = [
            (0.22, self.iamat), (0.10, self.random_bytes), (0.06, self.non_utf8),
            (0.06, self.with_nul), (0.20, self.corrupted), (0.10, self.numbers),
            (0.06, self.peer_words), (0.06, self.at_line), (0.06, self.blank),
            (0.02, self.exact_limit), (0.06, self.whatsat_junk),
        ]
        for weight, make in table:
            if r < weight:
                return make()
            r -= weight
        return self.iamat()

    def terminator(self) -> bytes:
        return self.rng.choice((b"\n",) * 6 + (b"\r\n", b"\r\n", b"\r\r\n"))


def classify(line: bytes, now_ns: int) -> Expect | None:
    """The expected answer to ``line``, or None when the line must not be sent
    (a valid WHATSAT, or a time so close to the future bound that the node's
    clock could see it differently)."""
    first = parse_request(line, now_ns, MAX_FUTURE_NS)
    later = parse_request(line, now_ns + 120 * 10**9, MAX_FUTURE_NS)
    if type(first) is not type(later) or isinstance(first, Whatsat):
        return None
    if first is None:
        return Expect(line, "blank")
    if isinstance(first, Invalid):
        return Expect(line, "invalid")
    assert isinstance(first, Iamat)
    return Expect(line, "iamat", first)


def frame(stream: bytes, now_ns: int) -> list[Expect]:
    """Split a connection's bytes as the node does (``\\n`` ends a line, one
    trailing ``\\r`` dropped, an unterminated last line counts at half-close)."""
    *lines, partial = stream.split(b"\n")
    if partial:
        lines.append(partial)
    out = []
    for line in lines:
        line = line[:-1] if line.endswith(b"\r") else line
        assert len(line) <= LIMIT
        expect = classify(line, now_ns)
        assert expect is not None, line
        out.append(expect)
    return out


def build_connection(corpus: Corpus, count: int, now_ns: int) -> bytes:
    """``count`` lines' bytes; the last one unterminated (sent before a half-close)."""
    kept: list[bytes] = []
    while len(kept) < count:
        content = corpus.content()
        if corpus.rng.random() < 0.03:
            content = b"\r" + content  # as after a "\n\r" line ending
        line = content + corpus.terminator()
        body = line[:-1]
        body = body[:-1] if body.endswith(b"\r") else body
        if len(body) <= LIMIT and classify(body, now_ns) is not None:
            kept.append(line)
    kept[-1] = kept[-1].rstrip(b"\n")  # unterminated
    return b"".join(kept)


# -- talking to the node ---------------------------------------------------


def exchange(port: int, stream: bytes, rng: random.Random, mode: str) -> bytes:
    """Send ``stream`` (whole, in random chunks, or partly byte by byte),
    half-close, and return all the node sent back until it closed."""
    received: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def read() -> None:
            try:
                while chunk := sock.recv(65536):
                    received.append(chunk)
            except OSError as err:
                received.append(b"<<%s>>" % repr(err).encode())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            if mode == "burst":
                sock.sendall(stream)
            elif mode == "slow-then-burst":  # a partial line read piecewise, then the rest at once
                for at in range(0, 4000, 100):
                    sock.sendall(stream[at:at + 100])
                    time.sleep(0.001)
                sock.sendall(stream[4000:])
            else:
                at = 0
                while at < len(stream):
                    if mode == "trickle" and at < 3000:
                        size = rng.randint(1, 3)
                    else:
                        size = rng.choice((1, 2, 7, 100, 1000, 4095, 4097, 9000, 30000))
                    sock.sendall(stream[at:at + size])
                    at += size
                    if rng.random() < 0.02:
                        time.sleep(0.002)  # let the node read a partial line on its own
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the node may close first (over-long line); what it sent is checked
        reader.join(timeout=60)
        assert not reader.is_alive(), "node did not close the connection"
    return b"".join(received)


def check_replies(data: bytes, expected: list[Expect], where: str) -> None:
    replies = data.split(b"\n")
    assert replies[-1] == b"", f"{where}: reply stream does not end with a newline: {data[-200:]!r}"
    replies = replies[:-1]
    answered = [e for e in expected if e.kind != "blank"]
    assert len(replies) == len(answered), (
        f"{where}: {len(answered)} lines needing a reply, {len(replies)} replies")
    for i, (expect, reply) in enumerate(zip(answered, replies, strict=True)):
        reply += b"\n"
        if expect.kind == "invalid":
            assert reply == b"? " + expect.line + b"\n", (
                f"{where}: reply {i} to {expect.line[:200]!r} was {reply[:200]!r}")
        else:
            request = expect.request
            assert request is not None
            fields = reply.split(b" ")
            ok = (len(fields) == 6 and fields[:2] == [b"AT", b"Solo"] and SKEW.match(fields[2])
                  and fields[3:] == [request.client_id, request.location.text, request.time.text + b"\n"])
            assert ok, f"{where}: reply {i} to {expect.line[:200]!r} was {reply[:200]!r}"


def stored_clients(herd: Herd) -> dict[bytes, int]:
    """{client id: stored time in ns} for every herd:client:* key in Redis."""
    redis = herd["Solo"].redis
    keys: list[bytes] = []
    cursor = b"0"
    while True:
        reply = redis.call("SCAN", cursor, "MATCH", "herd:client:*", "COUNT", "1000")
        assert isinstance(reply, list)
        cursor, batch = reply
        keys.extend(batch)
        if cursor == b"0":
            break
    out = {}
    for key in keys:
        stored = redis.call("HGET", key, "time")
        assert isinstance(stored, bytes)
        parsed = parse_client_time(stored)
        assert parsed is not None, (key, stored)
        out[key[len(b"herd:client:"):]] = parsed.ns
    return out


# -- the test ---------------------------------------------------------------


@pytest.mark.timeout(120)
def test_fuzzed_lines_get_one_reply_each_and_change_only_valid_clients(solo: Herd) -> None:
    rng = random.Random(SEED)
    now_ns = time.time_ns()
    corpus = Corpus(rng, now_ns)
    port = solo["Solo"].port
    valid: dict[bytes, int] = {}
    total = 0
    modes = ["burst", "chunks", "trickle"]
    for c in range(CONNECTIONS):
        stream = build_connection(corpus, LINES // CONNECTIONS, now_ns)
        expected = frame(stream, now_ns)
        total += len(expected)
        data = exchange(port, stream, rng, modes[c % len(modes)])
        check_replies(data, expected, f"connection {c}")
        for e in expected:
            if e.request is not None:
                cid = e.request.client_id
                valid[cid] = max(valid.get(cid, -1), e.request.time.ns)
    assert total >= 10_000

    # Over-long lines, each on its own connection: the lines before are
    # answered, then one "line too long", then the node closes; nothing after
    # the over-long line is read.
    padded = corpus.exact_limit()
    while not padded.startswith(b"IAMAT") or classify(padded, now_ns) is None:
        padded = corpus.exact_limit()
    over = [  # (lines answered before, the rest: an over-long line and maybe more)
        (b"IAMAT over.0 +1+1 1700000000\n", b"x" * (LIMIT + 1) + b"\nIAMAT after.0 +1+1 1700000000\n"),
        (b"", b"y" * 5000),  # unterminated, past the limit already
        (b"", b"z" * (LIMIT + 1) + b"\r\r\n"),
        (padded + b"\r\n", b"\x00" * (LIMIT + 1) + b"\nIAMAT after.1 +1+1 1700000000"),
        (b"IAMAT " + b"o" * 300 + b" +1+1 1700000000\n", b"\xff" * 3000 + b"\xfe" * 1097 + b"\n"),
    ]
    for i, (head, rest) in enumerate(over):
        expected = frame(head, now_ns)
        # Everything past the first 4000 bytes goes in one write: the node
        # closes on the over-long line, and bytes still arriving then could
        # turn its close into a reset that discards replies on our side.
        data = exchange(port, head + rest, rng, "slow-then-burst" if i % 2 else "burst")
        assert data.endswith(TOO_LONG), f"over-long case {i}: {data[-120:]!r}"
        check_replies(data[: -len(TOO_LONG)], expected, f"over-long case {i}")
        for e in expected:
            if e.request is not None:
                cid = e.request.client_id
                valid[cid] = max(valid.get(cid, -1), e.request.time.ns)

    assert solo["Solo"].alive(), "node died"
    assert talk(port, "IAMAT still.alive +1+1 1700000000").startswith(b"AT Solo ")
    valid[b"still.alive"] = 1700000000 * 10**9
    assert stored_clients(solo) == valid
