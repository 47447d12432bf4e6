"""Reconciliation with real processes on the five-node topology: nodes that
were apart converge when their links come back, newest client time wins,
and a reconnect costs in proportion to what was missed."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import FIVE, Herd, talk
from harness import REPO, wait_until


@pytest.fixture
def herd(tmp_path: Path) -> Iterator[Herd]:
    h = Herd(tmp_path, FIVE).start()
    try:
        h.wait_links()
        yield h
    finally:
        h.stop()


def send_many(herd: Herd, node: str, prefix: str, count: int, seconds: int = 1700000000) -> None:
    lines = [f"IAMAT {prefix}{i} +10.{i:04d}-020.5 {seconds}.{i:09d}" for i in range(count)]
    replies = talk(herd[node].port, *lines).splitlines()
    assert len(replies) == count and all(r.startswith(f"AT {node} ".encode()) for r in replies)


def check(herd: Herd) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "herd", "check", "--config", str(herd.config)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def converged(herd: Herd, timeout: float = 15.0) -> str:
    result: list[subprocess.CompletedProcess[str]] = []
    wait_until(lambda: result.append(check(herd)) or result[-1].returncode == 0, timeout,
               what="herd check to agree")
    return result[-1].stdout


def synced_records(log: str, to: str) -> list[tuple[str, int]]:
    return [(m[0], int(m[1])) for m in re.findall(rf"sync to {to}: (\w+), (\d+) records", log)]


def test_restarted_node_gets_what_it_missed_and_only_that(herd: Herd) -> None:
    send_many(herd, "Bailey", "before", 200)
    wait_until(lambda: check(herd).returncode == 0, what="initial agreement")
    herd["Jaquez"].kill()
    send_many(herd, "Bailey", "missed", 150)
    herd["Jaquez"].start()
    out = converged(herd)
    assert "Jaquez: 350 clients" in out
    # Jaquez's peers answered its SYNC incrementally: the 150 it missed, not all 350.
    for peer in ("Campbell", "Clark"):
        wait_until(lambda p=peer: len(synced_records(herd[p].log(), "Jaquez")) >= 2, what=f"{peer} synced")
        mode, records = synced_records(herd[peer].log(), "Jaquez")[-1]
        assert (mode, records) == ("incremental", 150), peer


def test_isolated_node_and_newer_update_elsewhere_converge(herd: Herd) -> None:
    send_many(herd, "Clark", "shared", 5)
    wait_until(lambda: check(herd).returncode == 0, what="initial agreement")
    for peer in ("Bona", "Jaquez"):  # Clark's neighbours: Clark is cut off
        herd[peer].kill()
    send_many(herd, "Clark", "iso", 100)
    talk(herd["Clark"].port, "IAMAT shared0 +1+1 1700000100.000000001")
    newer = talk(herd["Bailey"].port, "IAMAT shared0 +2+2 1700000100.000000002").rstrip(b"\n")
    assert newer.startswith(b"AT Bailey ")
    for peer in ("Bona", "Jaquez"):
        herd[peer].start()
    out = converged(herd)
    assert "DISAGREE" not in out
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


def test_two_nodes_restarted_at_once(herd: Herd) -> None:
    for name in ("Bona", "Campbell"):  # Bailey's only neighbours
        herd[name].kill()
    send_many(herd, "Bailey", "alone", 60)
    send_many(herd, "Jaquez", "other", 60)
    for name in ("Bona", "Campbell"):
        herd[name].start(wait=False)
    out = converged(herd)
    assert "Bailey: 120 clients" in out and "Clark: 120 clients" in out


def test_check_reports_differences_and_exits_1(herd: Herd) -> None:
    herd["Clark"].kill()
    send_many(herd, "Bailey", "diff", 3)
    wait_until(lambda: herd["Jaquez"].record("diff2") != {}, what="flood")
    result = check(herd)
    assert result.returncode == 1
    assert "Clark: 0 clients" in result.stdout and "differs: diff0" in result.stdout
    assert "DISAGREE" in result.stdout


def test_check_compares_every_field_and_the_geo_set(herd: Herd) -> None:
    send_many(herd, "Bailey", "whole", 2)
    converged(herd)
    herd["Clark"].redis.call("HSET", "herd:client:whole0", "lat", "+35.0")  # the AT line is intact
    herd["Jaquez"].redis.call("ZREM", "herd:geo", "whole1")
    result = check(herd)
    assert result.returncode == 1, result.stdout
    assert "differs: whole0" in result.stdout and "lat=+35.0" in result.stdout
    assert "differs: whole1" in result.stdout and "DISAGREE: 2 differing clients" in result.stdout


def test_offsets_keep_up_with_updates_a_peer_originated(tmp_path: Path) -> None:
    herd = Herd(tmp_path, {"A": ["B"], "B": []}).start()
    try:
        herd.wait_links()
        send_many(herd, "A", "own", 300)
        wait_until(lambda: herd["B"].redis.hgetall("herd:summary").get(b"clients") == b"300", what="flood")
        # B stored A's 300 updates in its log; A never gets them back as U
        # lines, but K lines move A's offset for B's log to B's log head.
        head = herd["B"].redis.call("XREVRANGE", "herd:log", "+", "-", "COUNT", "1")
        wait_until(lambda: herd["A"].redis.hgetall("herd:peer:B").get(b"pos") == head[0][0],  # type: ignore[index]
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
