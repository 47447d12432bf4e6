"""Reconciliation with real processes on the five-node topology: nodes that
were apart converge when their links come back, newest client time wins,
and a reconnect costs in proportion to what was missed."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from cluster import FIVE, Herd, talk
from harness import Resp, wait_until


@pytest.fixture
def herd(tmp_path: Path) -> Iterator[Herd]:
    h = Herd(tmp_path, FIVE).start()
    try:
        h.wait_links()
        yield h
    finally:
        h.stop()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Herd]:
    """A linked to B (listed on A's side only), both running."""
    h = Herd(tmp_path, {"A": ["B"], "B": []}).start()
    try:
        h.wait_links()
        yield h
    finally:
        h.stop()


def counted(herd: Herd, name: str) -> bytes | None:
    """The client count of node ``name``'s summary hash."""
    return herd[name].redis.hgetall("herd:summary").get(b"clients")


def send_many(herd: Herd, node: str, prefix: str, count: int, seconds: int = 1700000000) -> None:
    lines = [f"IAMAT {prefix}{i} +10.{i:04d}-020.5 {seconds}.{i:09d}" for i in range(count)]
    replies = talk(herd[node].port, *lines).splitlines()
    assert len(replies) == count and all(r.startswith(f"AT {node} ".encode()) for r in replies)


# A node's whole state: client id -> (every field of its hash, its GEO score).
State = dict[bytes, tuple[tuple[tuple[bytes, bytes], ...], bytes | None]]
CLIENT = b"herd:client:"


def held(herd: Herd) -> dict[str, State]:
    """Every node's whole state, read from its Redis."""
    states: dict[str, State] = {}
    for name, node in herd.nodes.items():
        with Resp(node.redis.port) as redis:
            keys = redis.scan(CLIENT + b"*")
            replies = redis.pipeline([c for k in keys for c in
                                      (("HGETALL", k), ("ZSCORE", "herd:geo", k[len(CLIENT):]))])
        states[name] = {k[len(CLIENT):]: (tuple(sorted(zip(h[::2], h[1::2], strict=True))), geo)
                        for k, h, geo in zip(keys, replies[::2], replies[1::2], strict=True)}
    return states


def converged(herd: Herd, timeout: float = 15.0) -> dict[str, int]:
    """Wait until every node holds exactly the same records (every field and
    the GEO set); the number of clients each holds."""
    last: list[dict[str, State]] = []

    def same() -> bool:
        try:
            last.append(held(herd))
        except (OSError, RuntimeError):
            return False
        first, *rest = last[-1].values()
        return all(state == first for state in rest)

    wait_until(same, timeout, what="all nodes to hold the same state", every=0.1)
    return {name: len(state) for name, state in last[-1].items()}


def log_head(herd: Herd, name: str) -> bytes | None:
    """The position of the last element of ``name``'s journal (None: empty)."""
    redis = herd[name].redis
    last = int(redis.call("GET", "herd:journal:base") or 0) + redis.call("LLEN", "herd:journal")
    return b"0-%d" % last if last else None


def caught_up(herd: Herd, name: str) -> None:
    """Wait until ``name`` has applied each neighbour's log to its head (the
    K lines that move its offsets trail the records themselves)."""

    def at_head(peer: str) -> bool:
        return herd[name].redis.hgetall(f"herd:peer:{peer}").get(b"pos") == log_head(herd, peer)

    for peer in herd.neighbours(name):
        wait_until(partial(at_head, peer), what=f"{name}'s offset for {peer}'s log at its head")


def synced_records(log: str, to: str) -> list[tuple[str, int]]:
    return [(m[0], int(m[1])) for m in re.findall(rf"sync to {to}: (\w+), (\d+) records", log)]


def test_restarted_node_gets_what_it_missed_and_only_that(herd: Herd) -> None:
    send_many(herd, "Bailey", "before", 200)
    converged(herd)
    caught_up(herd, "Jaquez")
    herd["Jaquez"].kill()
    send_many(herd, "Bailey", "missed", 150)
    herd["Jaquez"].start()
    assert converged(herd)["Jaquez"] == 350
    # Jaquez's peers answered its SYNC incrementally: the 150 it missed, not all 350.

    def synced_twice(peer: str) -> bool:
        return len(synced_records(herd[peer].log(), "Jaquez")) >= 2

    for peer in ("Campbell", "Clark"):
        wait_until(partial(synced_twice, peer), what=f"{peer} synced")
        mode, records = synced_records(herd[peer].log(), "Jaquez")[-1]
        assert (mode, records) == ("incremental", 150), peer


def test_isolated_node_and_newer_update_elsewhere_converge(herd: Herd) -> None:
    send_many(herd, "Clark", "shared", 5)
    converged(herd)
    for peer in ("Bona", "Jaquez"):  # Clark's neighbours: Clark is cut off
        herd[peer].kill()
    send_many(herd, "Clark", "iso", 100)
    talk(herd["Clark"].port, "IAMAT shared0 +1+1 1700000100.000000001")
    newer = talk(herd["Bailey"].port, "IAMAT shared0 +2+2 1700000100.000000002").rstrip(b"\n")
    assert newer.startswith(b"AT Bailey ")
    for peer in ("Bona", "Jaquez"):
        herd[peer].start()
    converged(herd)
    for node in herd.nodes.values():
        assert node.record("shared0")[b"at"] == newer
        assert node.record("iso99")[b"server"] == b"Clark"
        assert node.redis.call("EXISTS", "herd:client:iso0") == 1


def test_redis_killed_and_restarted_under_a_node(herd: Herd) -> None:
    herd["Bona"].redis.kill()
    send_many(herd, "Bailey", "redisdown", 50)
    herd["Bona"].redis.start()
    converged(herd)
    assert herd["Bona"].record("redisdown49")[b"server"] == b"Bailey"
    assert "pulling every peer's updates again" not in herd["Bona"].log()  # it lost nothing (always)


def test_two_nodes_restarted_at_once(herd: Herd) -> None:
    for name in ("Bona", "Campbell"):  # Bailey's only neighbours
        herd[name].kill()
    send_many(herd, "Bailey", "alone", 60)
    send_many(herd, "Jaquez", "other", 60)
    for name in ("Bona", "Campbell"):
        herd[name].start(wait=False)
    assert converged(herd) == {name: 120 for name in FIVE}


def test_offsets_keep_up_with_updates_a_peer_originated(tmp_path: Path) -> None:
    herd = Herd(tmp_path, {"A": ["B"], "B": []}).start()
    try:
        herd.wait_links()
        send_many(herd, "A", "own", 300)
        wait_until(lambda: herd["B"].redis.hgetall("herd:summary").get(b"clients") == b"300", what="flood")
        # B stored A's 300 updates in its log; A never gets them back as U
        # lines, but K lines move A's offset for B's log to B's log head.
        head = log_head(herd, "B")
        wait_until(lambda: herd["A"].redis.hgetall("herd:peer:B").get(b"pos") == head,
                   what="A's offset for B at B's log head")
        herd["A"].kill()
        herd["A"].start()
        converged(herd)
        # B's answer to A's SYNC walked no old entries and sent nothing.
        wait_until(lambda: len(synced_records(herd["B"].log(), "A")) >= 2, what="B answered A's SYNC")
        mode, records = synced_records(herd["B"].log(), "A")[-1]
        assert (mode, records) == ("incremental", 0)
    finally:
        herd.stop()


def test_a_redis_emptied_under_a_running_node_is_filled_again(pair: Herd) -> None:
    # Found by a review: after FLUSHALL on its Redis a node held nothing, said
    # nothing and answered '?' for its clients until some new update happened
    # to break a log chain.
    send_many(pair, "A", "kept", 20)
    wait_until(lambda: counted(pair, "B") == b"20", what="flood")
    pair["B"].redis.call("FLUSHALL")
    wait_until(lambda: counted(pair, "B") == b"20", timeout=15, what="B filled again")
    wait_until(lambda: "; pulling every peer's updates again" in pair["B"].log(), what="the loss logged")
    said = pair["B"].log()
    assert "its update log was replaced (" in said or "no update log any more" in said
    assert pair["B"].record("kept19")[b"server"] == b"A"


def test_a_redis_restored_from_an_older_copy_under_a_running_node_begins_a_new_log(pair: Herd,
                                                                                     tmp_path: Path) -> None:
    # Found by a review: the journal went back to fewer entries in the same
    # epoch, the node wrote new updates at positions its peer had applied
    # already, and the peer, pulling from its offset, never got them.
    send_many(pair, "B", "old", 20)
    wait_until(lambda: counted(pair, "A") == b"20", what="flood")
    redis = pair["B"].redis
    redis.stop()
    copy = tmp_path / "older-copy"
    shutil.copytree(redis.data_dir, copy)
    redis.start()
    send_many(pair, "B", "gone", 30)  # entries 21-50, then lost with the copy put back
    wait_until(lambda: counted(pair, "A") == b"50", what="flood")
    pair["A"].pause()  # A cannot pull at once: B writes past its old head first
    redis.stop()
    shutil.rmtree(redis.data_dir)
    shutil.copytree(copy, redis.data_dir)
    redis.start()
    wait_until(lambda: "its update log went back from 50 to 20 entries" in pair["B"].log() or
               "its update log was replaced (50 entries" in pair["B"].log(), timeout=15, what="B noticed")
    send_many(pair, "B", "new", 40)  # positions 21-60: past A's offset (50) in a log that is new
    pair["A"].resume()
    converged(pair)
    assert pair["A"].record("new0")[b"server"] == b"B"
