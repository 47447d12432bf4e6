"""What a node knows, without asking Redis, about the newest record it holds
per client: enough to forward a strictly newer update to its peers the moment
it arrives (cut-through), while its own Redis stores it in parallel.

Invariant: for every client in the table, the time recorded is at least the
client-time this node's Redis holds. Redis changes only through this node,
and every write raises the table first (fast path) or once its outcome is
known (slow path; a client with a slow-path write in flight never takes the
fast path). Once the table is ``complete`` (every client in Redis was read
into it at start), a client missing from it is one Redis does not hold. So
an update above the table's time, or for a client missing from a complete
table, is strictly newer than what Redis holds, and will be stored.

Memory: one dict entry per client (about 150 bytes in CPython for a short
id). Past ``max_clients`` the table stops growing and is no longer complete:
updates for clients it does not know then take the slow path (forwarded once
Redis has said they were newer), as they do while the table is loading.
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_CLIENTS = 2_000_000


class LatestTimes:
    def __init__(self, max_clients: int = MAX_CLIENTS):
        self._ns: dict[bytes, int] = {}
        self._pending: dict[bytes, int] = {}  # client -> slow-path writes in flight
        self._max = max_clients
        self._overflowed = False
        self.complete = False

    def __len__(self) -> int:
        return len(self._ns)

    def claim(self, client_id: bytes, ns: int, fast_ok: bool = True) -> bool:
        """True (fast path): an update at ``ns`` is certainly newer than what
        Redis holds for ``client_id``; it is recorded, and the caller stores it.
        False (slow path, always when not ``fast_ok``): the caller stores it,
        lets Redis decide, and then calls :meth:`settle` exactly once."""
        if fast_ok and client_id not in self._pending:
            held = self._ns.get(client_id)
            if held is None:
                fast = self.complete and len(self._ns) < self._max
            else:
                fast = ns > held
            if fast:
                self._ns[client_id] = ns
                return True
        self._pending[client_id] = self._pending.get(client_id, 0) + 1
        return False

    def settle(self, client_id: bytes, ns: int, may_hold: bool) -> None:
        """A slow-path write finished. ``may_hold``: Redis may now hold ``ns``
        (stored, or failed with its outcome unknown); False when Redis said it
        already held something at least as new."""
        left = self._pending.pop(client_id) - 1
        if left:
            self._pending[client_id] = left
        if may_hold:
            self._raise(client_id, ns)

    def merge(self, held: Iterable[tuple[bytes, int]]) -> None:
        """Times read from Redis while loading."""
        for client_id, ns in held:
            self._raise(client_id, ns)

    def loaded(self) -> None:
        """Every client in Redis has been merged: a missing client is unknown there."""
        self.complete = not self._overflowed

    def _raise(self, client_id: bytes, ns: int) -> None:
        held = self._ns.get(client_id)
        if held is None:
            if len(self._ns) < self._max:
                self._ns[client_id] = ns
            else:
                self._overflowed = True
                self.complete = False
        elif ns > held:
            self._ns[client_id] = ns
