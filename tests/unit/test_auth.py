"""herd.wire.handshake: the peer handshake's MACs and nonces (SPEC section 2, authentication)."""

from __future__ import annotations

import hashlib
import hmac
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from herd.wire import handshake as auth

SECRET = b"the herd's shared secret"
ND = b"0123456789abcdef0123456789abcdef"
NL = b"fedcba9876543210fedcba9876543210"
BASE = (SECRET, b"listener", b"Bailey", b"Bona", ND, NL)

PROPS = settings(max_examples=300, deadline=None)


def test_mac_is_hmac_sha256_in_lowercase_hex() -> None:
    tag = auth.mac(*BASE)
    assert re.fullmatch(rb"[0-9a-f]{64}", tag)
    framed = b"12:herd-peer-v48:listener6:Bailey4:Bona32:" + ND + b"32:" + NL
    expected = hmac.new(SECRET, framed, hashlib.sha256)
    assert tag == expected.hexdigest().encode()


def test_mac_framing_is_unambiguous() -> None:
    assert auth.mac(SECRET, b"listener", b"a|b", b"c", ND, NL) != auth.mac(
        SECRET, b"listener", b"a", b"b|c", ND, NL
    )
    assert auth.mac(SECRET, b"listener", b"ab", b"c", ND, NL) != auth.mac(
        SECRET, b"listener", b"a", b"bc", ND, NL
    )


def test_mac_is_deterministic() -> None:
    assert auth.mac(*BASE) == auth.mac(*BASE)


@pytest.mark.parametrize(
    "position, other",
    [
        (0, b"another secret"),
        (1, b"dialler"),  # the role: a reflected challenge is not an answer
        (2, b"Bailey2"),
        (3, b"Bona2"),
        (4, NL),
        (5, ND),
    ],
)
def test_mac_depends_on_every_input(position: int, other: bytes) -> None:
    changed = list(BASE)
    changed[position] = other
    assert auth.mac(*changed) != auth.mac(*BASE)


def test_mac_distinguishes_the_direction_of_the_link() -> None:
    secret, role, dialler, listener, nd, nl = BASE
    assert auth.mac(secret, role, listener, dialler, nd, nl) != auth.mac(*BASE)
    assert auth.mac(secret, role, dialler, listener, nl, nd) != auth.mac(*BASE)


def test_listener_and_dialler_macs_differ_for_the_same_handshake() -> None:
    listener_mac = auth.mac(SECRET, b"listener", b"Bailey", b"Bona", ND, NL)
    dialler_mac = auth.mac(SECRET, b"dialler", b"Bailey", b"Bona", ND, NL)
    assert listener_mac != dialler_mac


names = st.binary(min_size=1, max_size=12).filter(lambda b: b"|" not in b)
# HMAC pads short keys with zero bytes, so b"k" and b"k\x00" are one key. A
# secret comes from an environment variable, which cannot hold a NUL byte.
secrets = st.binary(max_size=16).filter(lambda b: b"\x00" not in b)
nonces = st.binary(min_size=16, max_size=16).map(lambda b: b.hex().encode())


@PROPS
@given(st.tuples(secrets, names, names, names, nonces, nonces), st.data())
def test_changing_any_one_input_changes_the_mac(inputs: tuple[bytes, ...], data: st.DataObject) -> None:
    position = data.draw(st.integers(0, 5))
    values = secrets if position == 0 else st.binary(max_size=16)
    other = data.draw(values.filter(lambda b: b != inputs[position] and b"|" not in b))
    changed = list(inputs)
    changed[position] = other
    assert auth.mac(*changed) != auth.mac(*inputs)


def test_verify_accepts_only_the_same_mac() -> None:
    tag = auth.mac(*BASE)
    assert auth.verify(tag, tag)
    assert auth.verify(tag, bytes(tag))
    assert not auth.verify(tag, tag[:-1] + (b"0" if tag[-1:] != b"0" else b"1"))
    assert not auth.verify(tag, tag.upper())
    assert not auth.verify(tag, tag[:-1])  # a prefix
    assert not auth.verify(tag, tag + b"0")  # an extension
    assert not auth.verify(tag, b"")
    assert not auth.verify(tag, auth.mac(SECRET, b"dialler", *BASE[2:]))


@PROPS
@given(st.binary(max_size=70), st.binary(max_size=70))
def test_verify_is_equality(a: bytes, b: bytes) -> None:
    assert auth.verify(a, b) is (a == b)
    assert auth.verify(a, a) is True


def test_verify_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert auth.verify(b"abc", b"abc")
    assert not auth.verify(b"abc", b"abd")
    assert calls == [(b"abc", b"abc"), (b"abc", b"abd")]


def test_new_nonce_is_32_lowercase_hex_digits() -> None:
    nonce = auth.new_nonce()
    assert isinstance(nonce, bytes)
    assert re.fullmatch(rb"[0-9a-f]{32}", nonce)
    assert auth.is_nonce(nonce)


def test_new_nonces_are_fresh() -> None:
    nonces = [auth.new_nonce() for _ in range(2000)]
    assert len(set(nonces)) == len(nonces)
    assert all(auth.is_nonce(n) for n in nonces)
    # every hex digit turns up in every position sooner or later: they are random, not a counter
    for position in (0, 15, 31):
        assert len({n[position] for n in nonces}) == 16


@pytest.mark.parametrize(
    "value",
    [
        b"",
        ND[:-1],  # 31 digits
        ND + b"0",  # 33
        ND.upper(),
        b"0123456789ABCDEF0123456789abcdef",
        b"0123456789abcdeg0123456789abcdef",
        b" 123456789abcdef0123456789abcdef",
        b"0123456789abcdef0123456789abcde\n",
        b"0x23456789abcdef0123456789abcdef",
        "0123456789abcdef0123456789abcdé".encode(),  # 32 characters, 33 bytes
        b"\xff" * 32,
    ],
)
def test_is_nonce_rejects_anything_but_32_lowercase_hex_digits(value: bytes) -> None:
    assert not auth.is_nonce(value)


def test_is_nonce_accepts_32_lowercase_hex_digits() -> None:
    assert auth.is_nonce(ND)
    assert auth.is_nonce(b"0" * 32)
    assert auth.is_nonce(b"f" * 32)


@PROPS
@given(
    st.one_of(
        st.binary(max_size=40), st.text("0123456789abcdefABCDEFg", min_size=30, max_size=34).map(str.encode)
    )
)
def test_is_nonce_matches_its_definition(value: bytes) -> None:
    assert auth.is_nonce(value) is (re.fullmatch(rb"[0-9a-f]{32}", value) is not None)


def test_handshake_words_are_distinct_from_client_commands() -> None:
    words = {auth.HELLO, auth.CHALLENGE, auth.AUTH, auth.OK, auth.STARTTLS, auth.TLS_OK}
    assert len(words) == 6 and not words & {b"IAMAT", b"WHATSAT", b"AT"}
