"""TLS for peer links, mutually verified against the herd's CA.

A peer connection starts in plain text, then upgrades before the HMAC
handshake (herd.wire.handshake: HERD-STARTTLS, HERD-TLS-OK).

The listener presents its certificate and requires one from the dialler;
both must chain to ``tls_ca``, and the dialler checks the listener's
certificate names the host it dialled (an IP SAN for IP addresses).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config.schema import ConfigError, HerdConfig, TlsConfig


@dataclass(frozen=True)
class PeerTls:
    server: Any  # IOpenSSLServerConnectionCreator for accepted peers
    _ca: Any
    _own: Any

    def client(self, host: str) -> Any:
        """Options for dialling a peer at ``host``: verify it, present our cert."""
        from twisted.internet.ssl import optionsForClientTLS

        return optionsForClientTLS(host, trustRoot=self._ca, clientCertificate=self._own)


def tls_for(config: HerdConfig, name: str) -> PeerTls | None:
    """Node ``name``'s TLS for peer links (None without); ConfigError, one line
    naming the file, node and key, when a file cannot be used."""
    if config.tls is None:
        return None
    try:
        return load(config.tls.for_node(name))
    except TlsFileError as err:
        raise ConfigError(f"{config.path}: herd.{err} (node {name})") from None


class TlsFileError(Exception):
    """A TLS file cannot be used: ``key`` is the config key naming it."""

    def __init__(self, key: str, path: str, why: str):
        super().__init__(f"{key}: {path}: {why}")
        self.key = key


def load(tls: TlsConfig) -> PeerTls:
    """Read the PEM files (already resolved for this node). Raises
    TlsFileError naming the file that is unreadable, not PEM, or (the key)
    does not match the certificate."""
    from OpenSSL.crypto import FILETYPE_PEM
    from twisted.internet.ssl import Certificate, KeyPair, PrivateCertificate

    ca_pem, cert_pem, key_pem = _pem("tls_ca", tls.ca), _pem("tls_cert", tls.cert), _pem("tls_key", tls.key)
    ca = _parse("tls_ca", tls.ca, lambda: Certificate.loadPEM(ca_pem))
    _parse("tls_cert", tls.cert, lambda: Certificate.loadPEM(cert_pem))
    _parse("tls_key", tls.key, lambda: KeyPair.load(key_pem, FILETYPE_PEM))
    own = _parse("tls_key", tls.key, lambda: PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem),
                 why="does not match the certificate in tls_cert")
    return PeerTls(own.options(ca), ca, own)


def _pem(key: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise TlsFileError(key, path, err.strerror or str(err)) from None


def _parse(key: str, path: str, parse: Any, why: str | None = None) -> Any:
    try:
        return parse()
    except Exception as err:  # OpenSSL's and Twisted's errors; the message says which
        raise TlsFileError(key, path, why or f"not usable ({_reason(err)})") from None


def _reason(err: Exception) -> str:
    """OpenSSL's error list ([('PEM routines', '', 'no start line')]) as text."""
    details = err.args[0] if err.args and isinstance(err.args[0], list) else None
    if details and all(isinstance(d, tuple) and len(d) == 3 for d in details):
        return "; ".join(d[2] for d in details if d[2]) or type(err).__name__
    return str(err) or type(err).__name__
