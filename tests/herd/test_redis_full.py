"""A full Redis (maxmemory reached, ``maxmemory-policy noeviction`` from the
shipped ops/redis/redis.conf) refuses writes with OOM: the node answers
``? <line>``, never loses an acknowledged record to eviction, and serves
again once Redis has room."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest
from cluster import Herd
from harness import REPO, wait_until


def metric(herd: Herd, name: str) -> float | None:
    """One sample of node A's /metrics (None when absent)."""
    url = f"http://127.0.0.1:{herd['A'].ports.admin}/metrics"
    for line in urllib.request.urlopen(url, timeout=5).read().decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def clients_held(herd: Herd) -> set[bytes]:
    return {key.removeprefix(b"herd:client:") for key in herd["A"].redis.call("KEYS", "herd:client:*")}


@pytest.mark.timeout(120)
def test_a_full_redis_refuses_with_question_marks_and_evicts_nothing(tmp_path: Path) -> None:
    """maxmemory a little above what an idle node's Redis uses: IAMATs are
    answered AT until it is full, then '? <line>'; every client answered AT is
    still held (noeviction), and after maxmemory is raised the node serves."""
    herd = Herd(tmp_path, {"A": []}).start()
    try:
        redis = herd["A"].redis
        assert redis.call("CONFIG", "GET", "maxmemory-policy") == [b"maxmemory-policy", b"noeviction"]
        used = int(redis.info("memory")["used_memory"])
        redis.call("CONFIG", "SET", "maxmemory", str(used + 300_000))
        acknowledged, refused = set(), []
        with socket.create_connection(("127.0.0.1", herd["A"].port), timeout=15) as sock:
            replies = sock.makefile("rb")
            for n in range(20_000):
                line = f"IAMAT client-{n:05d}-{'x' * 40} +34.068930-118.445127 1700000000.{n}"
                sock.sendall(line.encode() + b"\n")
                reply = replies.readline()
                if reply.startswith(b"AT "):
                    acknowledged.add(reply.split()[3])
                else:
                    assert reply == f"? {line}\n".encode(), reply
                    refused.append(line)
                    if len(refused) == 3:
                        break
        assert acknowledged and len(refused) == 3, "Redis never filled up"
        assert clients_held(herd) == acknowledged  # nothing acknowledged was evicted
        wait_until(lambda: "Redis does not serve yet (OOM" in herd["A"].log(), what="the node's warning")
        assert metric(herd, "herd_redis_full") == 1.0  # the alert
        assert (metric(herd, 'herd_redis_refused_total{reason="OOM"}') or 0) >= 1
        redis.call("CONFIG", "SET", "maxmemory", "0")
        wait_until(lambda: "serves (connection" in herd["A"].log().split("Redis does not serve yet (OOM")[-1],
                   timeout=15, what="the node to notice Redis serves again")
        with socket.create_connection(("127.0.0.1", herd["A"].port), timeout=15) as sock:
            sock.sendall(refused[0].encode() + b"\n")
            assert sock.makefile("rb").readline().startswith(b"AT A ")
        assert metric(herd, "herd_redis_full") == 0.0
    finally:
        herd.stop()


def test_the_shipped_redis_conf_limits_memory_without_eviction() -> None:
    conf = [line.split() for line in (REPO / "ops/redis/redis.conf").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]
    settings = {words[0]: words[1:] for words in conf}
    assert settings["maxmemory-policy"] == ["noeviction"]
    assert settings["maxmemory"][0].endswith("mb") and int(settings["maxmemory"][0][:-2]) > 0
