"""Peer authentication: a mutual HMAC challenge-response over the shared secret.

The dialling node D opens a connection to the listening node L:

    D -> L   HERD-HELLO <D> <L> <nonce_d> <protocol>
    L -> D   HERD-CHALLENGE <nonce_l> <mac_l> [<mac_l'>]
    D -> L   HERD-AUTH <mac_d>

    mac_l = mac(secret, "listener", D, L, nonce_d, nonce_l)
    mac_d = mac(secret, "dialler", D, L, nonce_d, nonce_l)
    L -> D   HERD-OK

During a secret rotation the listener adds mac_l' made with its previous
secret; the dialler answers with whichever of its secrets matched.

(docs/PEER-PROTOCOL.md, "Handshake", gives the MAC's exact input.)

Each side proves knowledge of the secret over a nonce the other side chose
fresh, so a recorded handshake cannot be replayed; the role label in the
MAC input stops a reflected challenge from serving as an answer. <protocol>
is the version of the peer messages (herd.wire.peer); a listener refuses
(and logs) a dialler that speaks another one, since each side would drop or
misread the other's messages. Pure functions only: the connection code
holds the state.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from herd.wire.peer import VERSION

STARTTLS = b"HERD-STARTTLS"  # (optional, first) D -> L: upgrade to TLS before HERD-HELLO
TLS_OK = b"HERD-TLS-OK"  # L -> D: both sides start TLS now
HELLO = b"HERD-HELLO"
CHALLENGE = b"HERD-CHALLENGE"
AUTH = b"HERD-AUTH"
OK = b"HERD-OK"
PROTOCOL = VERSION  # of the peer messages (herd.wire.peer)

_NONCE_BYTES = 16
_NONCE_HEX = _NONCE_BYTES * 2


def new_nonce() -> bytes:
    """A fresh random nonce, hex encoded."""
    return os.urandom(_NONCE_BYTES).hex().encode()


def is_nonce(value: bytes) -> bool:
    return len(value) == _NONCE_HEX and all(c in b"0123456789abcdef" for c in value)


def mac(secret: bytes, role: bytes, dialler: bytes, listener: bytes, nonce_d: bytes, nonce_l: bytes) -> bytes:
    """HMAC-SHA256, hex encoded, binding the role and both node names and nonces."""
    parts = (b"herd-peer-v" + PROTOCOL, role, dialler, listener, nonce_d, nonce_l)
    message = b"".join(b"%d:%s" % (len(part), part) for part in parts)  # unambiguous framing
    return hmac.new(secret, message, hashlib.sha256).hexdigest().encode()


def verify(expected: bytes, given: bytes) -> bool:
    """Constant-time comparison of two MACs."""
    return hmac.compare_digest(expected, given)


def secret_behind(secrets: tuple[bytes, ...], given: list[bytes], role: bytes, dialler: bytes,
                  listener: bytes, nonce_d: bytes, nonce_l: bytes) -> bytes | None:
    """The first of ``secrets`` that made one of the ``given`` MACs for
    ``role``, or None. A node holds its current secret and, during a
    rotation, the previous one (docs/OPERATIONS.md, "Rotating the secret")."""
    for secret in secrets:
        expected = mac(secret, role, dialler, listener, nonce_d, nonce_l)
        if any(verify(expected, candidate) for candidate in given):
            return secret
    return None
