"""treq, fitted for herd's HTTP clients (the Google places providers, and
``herd status`` / ``herd check`` reading the nodes' ``/status``): a client
over a persistent connection pool, URLs treq can send, a body read with a
size cap."""

from __future__ import annotations

from typing import Any, cast

import treq
from hyperlink import EncodedURL
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IResponse


class BodyTooLarge(Exception):
    """A response body longer than the reader's cap (read_capped)."""


def pooled_client(reactor: Any) -> HTTPClient:
    """A treq client over a persistent connection pool on ``reactor``."""
    agent: Any = Agent(reactor, pool=HTTPConnectionPool(reactor))
    return HTTPClient(agent)



class _BodyProbe:
    """Stands in for a response in :func:`treq.collect` so that the body protocol
    (and through it the connection) can be reached to abort a stalled read."""

    def __init__(self, response: IResponse) -> None:
        self._response: Any = response
        self.length = response.length
        self._protocol: Protocol | None = None

    def deliverBody(self, protocol: Protocol) -> None:  # noqa: N802 (IResponse name)
        """Forward to the real response, remembering the protocol."""
        self._protocol = protocol
        self._response.deliverBody(protocol)

    def abort(self) -> None:
        """Drop the connection that is delivering the body, if any."""
        transport: Any = self._protocol.transport if self._protocol is not None else None
        if transport is not None:
            transport.loseConnection()


class _LiteralHostURL(EncodedURL):
    """A URL treq sends as it is. treq sends ``url.to_uri()``, and hyperlink's
    ``to_uri`` IDNA-encodes the host, which fails for an IPv6 literal such as
    ``[::1]`` (hyperlink issues 68 and 188) and for a host name with an
    underscore; an ASCII URL needs no encoding."""

    def to_uri(self, *args: Any, **kwargs: Any) -> EncodedURL:
        return self


def treq_url(url: str) -> str | EncodedURL:
    """``url`` as treq is to be given it: an ASCII one as it is (see
    _LiteralHostURL), any other for treq to encode. Raises hyperlink's
    URLParseError for what is no URL."""
    return _LiteralHostURL.from_text(url) if url.isascii() else url


def read_capped(response: IResponse, max_bytes: int) -> Deferred[bytes]:
    """The whole body of ``response``, read with :func:`treq.collect`.

    Fails with BodyTooLarge (and drops the connection) once more than
    ``max_bytes`` arrive. Cancelling the result drops the connection too.
    """
    chunks: list[bytes] = []
    size = 0

    def collector(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > max_bytes:
            raise BodyTooLarge(f"response over {max_bytes} bytes")
        chunks.append(data)

    probe = _BodyProbe(response)
    result: Deferred[bytes] = Deferred(lambda _: probe.abort())
    collected = treq.collect(cast(IResponse, probe), collector)

    def done(_: None) -> None:
        if not result.called:
            result.callback(b"".join(chunks))

    def failed(failure: Failure) -> None:
        if not result.called:
            result.errback(failure)

    collected.addCallbacks(done, failed)
    return result
