"""The Redis key schema (documented in the README). Every key starts with the
node's prefix (default ``herd:``) so several nodes can share one Redis."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: bytes = b"herd:"

    def client(self, client_id: bytes) -> bytes:
        """Hash of one client's record: at, server, skew, location, lat, lon, time."""
        return self.prefix + b"client:" + client_id

    @property
    def geo(self) -> bytes:
        """GEO set of client positions; member = client id."""
        return self.prefix + b"geo"

    @property
    def log(self) -> bytes:
        """Stream of stored updates (field ``c`` = client id), for reconciliation."""
        return self.prefix + b"log"

    @property
    def log_epoch(self) -> bytes:
        """Names this Redis's log; positions from another epoch are not comparable."""
        return self.prefix + b"log:epoch"

    def peer(self, name: bytes) -> bytes:
        """Hash ``epoch``, ``pos``: how far this node has applied peer ``name``'s log."""
        return self.prefix + b"peer:" + name

    @property
    def summary(self) -> bytes:
        """Hash ``clients`` (count) and ``digest`` (XOR of SHA-1 prefixes of all AT lines)."""
        return self.prefix + b"summary"

    @property
    def status(self) -> bytes:
        """Hash the node publishes every second for ``herd status``."""
        return self.prefix + b"status"

    @property
    def client_pattern(self) -> bytes:
        return self.prefix + b"client:*"
