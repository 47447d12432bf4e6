"""herd.client_port's pieces that need no socket."""

from __future__ import annotations

from decimal import Decimal

from twisted.internet.defer import Deferred, succeed

from herd.client_port import WHATSATS_AT_ONCE, _Searches
from herd.wire.client import Whatsat


def test_searches_that_end_at_once_do_not_nest() -> None:
    """Found by a review: with DeferredSemaphore, each WHATSAT waiting its turn
    started inside the end of the one before; when they all ended at once (the
    client gone, Redis away), 900 of them overflowed the stack (RecursionError)
    and the rest never ended."""
    searches = _Searches(WHATSATS_AT_ONCE)
    slow = [Deferred[bytes]() for _ in range(WHATSATS_AT_ONCE)]
    started: list[int] = []

    def search(request: Whatsat) -> Deferred[bytes]:
        started.append(request.limit)
        return slow[request.limit] if request.limit < len(slow) else succeed(b"%d" % request.limit)

    results: list[bytes] = []
    failures: list[object] = []
    for n in range(5000):
        searches.run(search, Whatsat(b"", b"c", Decimal(1), n)).addCallbacks(results.append, failures.append)
    assert started == list(range(WHATSATS_AT_ONCE)) and results == []  # four at a time
    for d in slow:
        d.callback(b"slow")
    assert started == list(range(5000))  # in order
    assert failures == []
    assert len(results) == 5000 and results.count(b"slow") == WHATSATS_AT_ONCE
