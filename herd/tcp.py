"""TCP settings and names for every connection of a node (client port, peer links, Redis)."""

from __future__ import annotations

from typing import Any


def set_no_delay(transport: Any) -> None:
    """Disable Nagle's algorithm on a TCP transport (others are left alone):
    a node's replies, forwarded updates and Redis calls leave at once."""
    if hasattr(transport, "setTcpNoDelay"):
        transport.setTcpNoDelay(True)


def peer_address(transport: Any) -> str:
    """``host:port`` of the other end of ``transport``, as the logs name it."""
    address = transport.getPeer()
    return f"{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}"
