"""The node's storage: one small interface over txredisapi.

Contract of every call: its Deferred fires with the answer once Redis has
acknowledged the command, or fails with :class:`StoreUnavailable` within
about ``timeout`` seconds when Redis is unreachable or stuck. The store
reconnects by itself (backoff capped at one second), so a node recovers
within a couple of seconds of Redis returning.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import txredisapi
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from config.schema import RedisAddress
from herd.protocol import AtRecord, parse_at_line
from storage.keys import Keys

STORE_IF_NEWER = resources.files("storage").joinpath("store_if_newer.lua").read_bytes()


class StoreUnavailable(Exception):
    """Redis could not be reached, or did not answer in time."""


class _ReconnectingFactory(txredisapi.RedisFactory):
    """txredisapi's pool factory with a short reconnect backoff and a hook that
    tells the store when a connection becomes usable."""

    initialDelay = 0.1
    maxDelay = 1.0
    noisy = False

    def __init__(self, on_connected: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._on_connected = on_connected

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if self.size:
            self._on_connected()


class RedisStore:
    """Client records in Redis under the key schema of :mod:`storage.keys`."""

    log = Logger()

    def __init__(self, reactor: IReactorTime, address: RedisAddress, prefix: bytes, timeout: float):
        self._reactor = reactor
        self._address = address
        self._timeout = timeout
        self.keys = Keys(prefix)
        self._waiters: list[Deferred[None]] = []
        self._factory = _ReconnectingFactory(
            self._wake_waiters,
            uuid=f"{address.host}:{address.port}", dbid=address.db, poolsize=1, isLazy=True,
            handler=txredisapi.ConnectionHandler, charset=None, password=address.password,
            replyTimeout=timeout, convertNumbers=False,
        )
        self._redis: Any = self._factory.handler

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        """Start connecting (and reconnecting) in the background."""
        endpoint = HostnameEndpoint(self._reactor, self._address.host, self._address.port,
                                    timeout=self._timeout)
        self._factory.startConnecting(endpoint)

    def stop(self) -> Deferred[Any]:
        """Close the connections; fires when they are closed."""
        return self._factory.disconnect()

    @property
    def connected(self) -> bool:
        return bool(self._factory.size)

    # -- verbs -----------------------------------------------------------

    def store_if_newer(self, record: AtRecord, tie_break: bool = False) -> Deferred[bool]:
        """Atomically store ``record`` if its client-time is strictly newer than the
        held one (with ``tie_break``, an equal time with a bytewise larger AT line
        also wins). Fires True if stored, False if the held record stands."""
        loc = record.location
        geo = (loc.lon.lstrip(b"+"), loc.lat.lstrip(b"+")) if loc.in_geo_range else (b"", b"")
        args = [
            str(record.time.ns).encode(), record.line, record.server, record.skew, loc.text,
            loc.lat, loc.lon, record.time.text, record.client_id, *geo,
            b"1" if tie_break else b"0",
        ]
        keys = [self.keys.client(record.client_id), self.keys.geo]
        d = self._call("eval", STORE_IF_NEWER, keys, args)
        return d.addCallback(lambda stored: stored == 1)

    def get(self, client_id: bytes) -> Deferred[AtRecord | None]:
        """The record held for ``client_id``, or None."""
        d = self._call("hget", self.keys.client(client_id), b"at")
        return d.addCallback(lambda at: parse_at_line(at) if at else None)

    def call(self, command: str, *args: Any) -> Deferred[Any]:
        """Any txredisapi command, with this store's timeout and error contract."""
        return self._call(command, *args)

    # -- plumbing --------------------------------------------------------

    def _call(self, command: str, *args: Any) -> Deferred[Any]:
        if self.connected:
            return self._run_now(command, args)
        return self._when_connected().addCallback(lambda _: self._run_now(command, args))

    def _run_now(self, command: str, args: tuple[Any, ...]) -> Deferred[Any]:
        try:
            d: Deferred[Any] = getattr(self._redis, command)(*args)
        except Exception as err:  # txredisapi raises synchronously when not connected
            return fail(StoreUnavailable(f"Redis {command}: {err}"))
        return d.addErrback(self._unavailable, command)

    def _unavailable(self, failure: Any, command: str) -> None:
        if failure.check(txredisapi.ResponseError):
            failure.raiseException()
        raise StoreUnavailable(f"Redis {command}: {failure.getErrorMessage()}")

    def _when_connected(self) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        timer = self._reactor.callLater(self._timeout, self._give_up, waiter)
        return waiter.addBoth(self._cancel_timer, timer)

    def _give_up(self, waiter: Deferred[None]) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            waiter.errback(StoreUnavailable(
                f"Redis at {self._address.host}:{self._address.port} unreachable "
                f"for {self._timeout:g}s"))

    @staticmethod
    def _cancel_timer(result: Any, timer: Any) -> Any:
        if timer.active():
            timer.cancel()
        return result

    def _wake_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)
