"""``herd places load``: load the offline places data set into nodes' Redis
from any host that reaches them, before the nodes start or while they run
(they load it themselves too, once their Redis serves)."""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.internet.task import react

from config.loader import load_config
from config.schema import ConfigError
from herd.places.offline import OfflinePlaces
from storage.store import RedisStore


def run_places_load(config_path: str, names: list[str]) -> int:
    """``herd places load --config FILE [NODE...]``: load the configured data set
    into each node's Redis; print one line per node; exit 1 if any failed."""
    config = load_config(config_path)
    unknown = [n for n in names if n not in config.nodes]
    if unknown:
        raise ConfigError(f"{config_path}: nodes.{unknown[0]}: no such node "
                          f"(known: {', '.join(sorted(config.nodes))})")
    chosen = list(dict.fromkeys(names)) or sorted(config.nodes)
    if config.places.provider != "offline":
        print(f"note: places.provider is {config.places.provider!r} in {config_path}: nodes answer "
              "WHATSAT from it, not from this data set", file=sys.stderr)
    failures: list[str] = []

    @inlineCallbacks
    def load_one(reactor: Any, name: str) -> Any:
        node = config.nodes[name]
        store = RedisStore(reactor, node.redis, node.prefix.encode(), max(config.redis_timeout, 10.0))
        store.start()
        try:
            places = OfflinePlaces(store, reactor, config.places.min_population)
            state = "loaded" if (yield places.ensure_loaded()) else "already loaded"
            print(f"{name}: {state} {places.version.decode()}", flush=True)
        except Exception as err:
            failures.append(name)
            print(f"{name}: FAILED: {err}", flush=True)
        finally:
            yield store.stop()

    def main(reactor: Any) -> Any:
        return DeferredList([load_one(reactor, n) for n in chosen])

    try:
        react(main)
    except SystemExit:
        pass
    return 1 if failures else 0
