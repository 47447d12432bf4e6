"""The Redis key schema (documented in the README). Every key starts with the
node's prefix (default ``herd:``) so several nodes can share one Redis."""

from __future__ import annotations

import re
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
    def journal(self) -> bytes:
        """List of stored updates, for reconciliation: one element per update,
        ``<client id>`` or ``<client id>\t<source peer>``, oldest first. The
        k-th element ever appended has the position ``0-<k>``. (It replaced
        the stream ``<prefix>log`` of version 0.2.0, which nothing reads now.)"""
        return self.prefix + b"journal"

    @property
    def journal_epoch(self) -> bytes:
        """Names this Redis's journal; positions from another epoch are not comparable."""
        return self.prefix + b"journal:epoch"

    @property
    def journal_base(self) -> bytes:
        """How many elements were trimmed from the journal's head (absent: none)."""
        return self.prefix + b"journal:base"

    @property
    def journal_batch(self) -> bytes:
        """The token of the last store batch applied with none lost before it
        (store_batch.lua): log steps are taken only in a batch that follows it."""
        return self.prefix + b"journal:batch"

    def peer(self, name: bytes) -> bytes:
        """Hash ``epoch``, ``pos``: how far this node has applied peer ``name``'s log."""
        return self.prefix + b"peer:" + name

    @property
    def summary(self) -> bytes:
        """Hash ``clients`` (count) and ``digest`` (XOR of SHA-1 prefixes of all AT lines)."""
        return self.prefix + b"summary"

    @property
    def status(self) -> bytes:
        """Hash the node publishes every second, for ``redis-cli`` (``herd status`` reads ``/status``)."""
        return self.prefix + b"status"

    @property
    def client_pattern(self) -> bytes:
        """SCAN MATCH pattern of every client hash (the prefix may hold ``*?[]\\``)."""
        return glob_escape(self.prefix) + b"client:*"

    # The offline places data set (storage.places_index) and the Google
    # answer cache (herd.places.cache); none of them travels between nodes.

    @property
    def places_version(self) -> bytes:
        """String: the version of the offline places data set in use."""
        return self.prefix + b"places:version"

    def places_geo(self, version: bytes) -> bytes:
        """GEO set of the data set ``version``: member = GeoNames id."""
        return self.prefix + b"places:" + version + b":geo"

    def places_info(self, version: bytes) -> bytes:
        """Hash of the data set ``version``: GeoNames id -> the place's result JSON."""
        return self.prefix + b"places:" + version + b":info"

    def places_cache(self, question: bytes) -> bytes:
        """String with a TTL: a Google provider's answer to ``question``."""
        return self.prefix + b"places:cache:" + question


def glob_escape(text: bytes) -> bytes:
    """``text`` matched literally in a Redis glob pattern (SCAN MATCH, KEYS)."""
    return re.sub(rb"([*?\[\]\\])", rb"\\\1", text)
