"""``herd check --config FILE``: do all nodes hold the same state?

Reads every node's Redis directly (the nodes need not be running), compares
each client's whole stored state across nodes (every field of its hash, and
its place in the GEO set), prints one line per node with its client count,
then the clients that differ (at most 20), and exits 0 only when every node
holds exactly the same records. Exit 1 when they differ or a Redis cannot be
read.
"""

from __future__ import annotations

import socket
from collections import Counter
from typing import Any, NamedTuple

from twisted.internet.defer import inlineCallbacks

from config.schema import HerdConfig, NodeConfig
from storage.store import RedisStore

SHOW_AT_MOST = 20


class Held(NamedTuple):
    at: bytes  # the AT line
    rest: bytes  # every field of the client's hash and its GEO score (storage/scan_state.lua)


@inlineCallbacks
def read_node(reactor: Any, node: NodeConfig, timeout: float) -> Any:
    """Every client's state in ``node``'s Redis: {client id: Held}."""
    store = RedisStore(reactor, node.redis, node.prefix.encode(), timeout)
    store.start()
    records: dict[bytes, Held] = {}
    try:
        cursor = b"0"
        while True:
            cursor, clients = yield store.scan_state(cursor, 2000)
            for client_id, at, rest in clients:
                records[client_id] = Held(at, rest)
            if cursor == b"0":
                return records
    finally:
        yield store.stop()


def is_this_machine(host: str) -> bool:
    """Whether ``host`` names an address of this machine (one it can bind)."""
    try:
        addresses = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    for family, kind, _, _, address in addresses:
        with socket.socket(family, kind) as probe:
            try:
                probe.bind((address[0], 0))
            except OSError:
                continue
            return True
    return False


def unreachable_here(config: HerdConfig) -> dict[str, str]:
    """Nodes whose Redis this machine cannot tell apart: a loopback URL on the
    node's own host (docs/OPERATIONS.md: every node at 127.0.0.1:6400) that
    another node's URL shares, read from here. Reading them would read one
    local Redis once per node and call the herd in agreement. Node name -> why.
    (A loopback URL of its own, e.g. an SSH tunnel's port, is read.)"""
    from config.loader import redis_on_other_machines

    elsewhere = {name: host for name, host in redis_on_other_machines(config).items()
                 if not is_this_machine(host)}
    # One port of this machine's loopback is one Redis, whatever the db or prefix.
    users = Counter(node.redis.port for node in config.nodes.values() if is_this_machine(node.redis.host))
    return {name: f"its Redis {config.nodes[name].redis.host}:{config.nodes[name].redis.port} is on the "
                  f"loopback of its host {host}, not of this machine"
            for name, host in elsewhere.items() if users[config.nodes[name].redis.port] > 1}


def differences(states: dict[str, dict[bytes, Held]]) -> list[bytes]:
    """Client ids whose state is not identical on every node, sorted."""
    clients = set().union(*states.values())
    return sorted(c for c in clients if len({s.get(c) for s in states.values()}) > 1)


def _describe(held: Held | None, same_at: bool) -> str:
    if held is None:
        return "(missing)"
    text = held.at.decode("utf-8", "backslashreplace")
    if same_at:  # the AT lines agree: show what else differs
        text += " | " + held.rest.decode("utf-8", "backslashreplace").replace("\n", " ")
    return text


def report(states: dict[str, dict[bytes, Held]], unreadable: dict[str, str]) -> tuple[str, bool]:
    """The text ``herd check`` prints, and whether the herd agrees."""
    out = []
    for name in sorted(states) + sorted(unreadable):
        if name in unreadable:
            out.append(f"{name}: unreadable ({unreadable[name]})")
        else:
            out.append(f"{name}: {len(states[name])} clients")
    differing = differences(states) if states else []
    for client in differing[:SHOW_AT_MOST]:
        out.append(f"differs: {client.decode('utf-8', 'backslashreplace')}")
        held = {name: states[name].get(client) for name in sorted(states)}
        same_at = len({h.at if h else None for h in held.values()}) == 1
        for name, h in held.items():
            out.append(f"  {name}: {_describe(h, same_at)}")
    if len(differing) > SHOW_AT_MOST:
        out.append(f"... and {len(differing) - SHOW_AT_MOST} more differing clients")
    agree = not differing and not unreadable
    out.append("agree: all nodes hold the same state" if agree
               else f"DISAGREE: {len(differing)} differing clients, {len(unreadable)} unreadable nodes")
    return "\n".join(out), agree


def gather(reactor: Any, config: HerdConfig) -> Any:
    """Deferred firing with (states, unreadable) for every node of ``config``."""
    from twisted.internet.defer import DeferredList

    elsewhere = unreachable_here(config)
    names = sorted(set(config.nodes) - set(elsewhere))
    reads = [read_node(reactor, config.nodes[n], config.redis_timeout) for n in names]

    def split(results: list[tuple[bool, Any]]) -> tuple[dict[str, Any], dict[str, str]]:
        states: dict[str, Any] = {}
        unreadable = dict(elsewhere)
        for name, (ok, value) in zip(names, results, strict=True):
            if ok:
                states[name] = value
            else:
                unreadable[name] = value.getErrorMessage()
        return states, unreadable

    return DeferredList(reads, consumeErrors=True).addCallback(split)


def run_check(config_path: str) -> int:
    from twisted.internet.task import react

    from config.loader import load_config

    config = load_config(config_path)
    outcome = [1]

    def main(reactor: Any) -> Any:
        def show(result: tuple[dict[str, Any], dict[str, str]]) -> None:
            text, agree = report(*result)
            print(text)
            outcome[0] = 0 if agree else 1

        return gather(reactor, config).addCallback(show)

    try:
        react(main)
    except SystemExit:  # react() always exits; our verdict is in outcome
        pass
    return outcome[0]
