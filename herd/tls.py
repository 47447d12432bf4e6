"""TLS for peer links, mutually verified against the herd's CA.

A peer connection starts in plain text on the node's ordinary port (clients
share it), then upgrades before the HMAC handshake:

    D -> L  HERD-STARTTLS
    L -> D  HERD-TLS-OK        (both sides start TLS; HERD-HELLO follows inside)

The listener presents its certificate and requires one from the dialler;
both must chain to ``tls_ca``, and the dialler checks the listener's
certificate names the host it dialled (an IP SAN for IP addresses).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config.schema import TlsConfig

STARTTLS = b"HERD-STARTTLS"
TLS_OK = b"HERD-TLS-OK"


@dataclass(frozen=True)
class PeerTls:
    server: Any  # IOpenSSLServerConnectionCreator for accepted peers
    _ca: Any
    _own: Any

    def client(self, host: str) -> Any:
        """Options for dialling a peer at ``host``: verify it, present our cert."""
        from twisted.internet.ssl import optionsForClientTLS

        return optionsForClientTLS(host, trustRoot=self._ca, clientCertificate=self._own)


def load(tls: TlsConfig) -> PeerTls:
    """Read the PEM files (already resolved for this node)."""
    from twisted.internet.ssl import Certificate, PrivateCertificate

    ca = Certificate.loadPEM(Path(tls.ca).read_bytes())
    own = PrivateCertificate.loadPEM(Path(tls.cert).read_bytes() + b"\n" + Path(tls.key).read_bytes())
    return PeerTls(own.options(ca), ca, own)
