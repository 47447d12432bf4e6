"""The Redis key schema (documented in the README). Every key starts with the
node's prefix (default ``herd:``) so several nodes can share one Redis."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: bytes = b"herd:"

    def client(self, client_id: bytes) -> bytes:
        """Hash of one client's record: at, server, skew, location, lat, lon, time, ns."""
        return self.prefix + b"client:" + client_id

    @property
    def geo(self) -> bytes:
        """GEO set of client positions; member = client id."""
        return self.prefix + b"geo"
