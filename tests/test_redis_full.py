"""A full Redis (maxmemory reached, ``maxmemory-policy noeviction`` from the
shipped ops/redis/redis.conf) refuses writes with OOM: the node answers
``? <line>``, never loses an acknowledged record to eviction, counts the
refusals (Stats.redis_refused, Stats.redis_full: the alert of
docs/OPERATIONS.md "Alerts") and serves again once Redis has room."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from cluster import Herd
from harness import REPO, redis_with_store, wait_until
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial import unittest

from herd.stats import Stats
from herd.wire.client import parse_at_line


def record(client: bytes, when: bytes) -> Any:
    parsed = parse_at_line(b"AT A +0.000000001 " + client + b" +1+1 " + when)
    assert parsed is not None
    return parsed


class RefusalsAreCounted(unittest.TestCase):
    def setUp(self) -> None:
        self.redis, self.store = redis_with_store(self, "herd-full-", timeout=2.0)
        self.stats = Stats()
        self.store.on_refused = self.stats.refused_by_redis
        self.store.on_connected.append(self.stats.redis_serves)

    @inlineCallbacks
    def until(self, predicate: Any, what: str) -> Any:
        for _ in range(200):
            if predicate():
                return
            yield deferLater(reactor, 0.02, lambda: None)
        self.fail(f"timed out waiting for {what}")

    @inlineCallbacks
    def test_oom_refusals_are_counted_and_full_clears_once_redis_takes_writes(self) -> Any:
        yield self.store.store_if_newer(record(b"before", b"1"))
        self.redis.call("CONFIG", "SET", "maxmemory", "1")
        for n in range(2):
            with self.assertRaisesRegex(Exception, "^OOM "):
                yield self.store.store_if_newer(record(b"refused%d" % n, b"2"))
        assert self.stats.redis_refused == {"OOM": 2}  # the store's own polls are not counted
        assert self.stats.redis_full
        yield deferLater(reactor, 0.3, lambda: None)  # the store polls Redis meanwhile
        assert self.stats.redis_refused == {"OOM": 2}
        self.redis.call("CONFIG", "SET", "maxmemory", "0")
        yield self.until(lambda: not self.stats.redis_full, "redis_full to clear")
        result = yield self.store.store_if_newer(record(b"after", b"3"))
        assert result.stored
        assert self.stats.redis_refused == {"OOM": 2} and self.stats.redis_refusing == ""


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
        redis.call("CONFIG", "SET", "maxmemory", "0")
        wait_until(lambda: "serves (connection" in herd["A"].log().split("Redis does not serve yet (OOM")[-1],
                   timeout=15, what="the node to notice Redis serves again")
        with socket.create_connection(("127.0.0.1", herd["A"].port), timeout=15) as sock:
            sock.sendall(refused[0].encode() + b"\n")
            assert sock.makefile("rb").readline().startswith(b"AT A ")
    finally:
        herd.stop()


def test_the_shipped_redis_conf_limits_memory_without_eviction() -> None:
    conf = [line.split() for line in (REPO / "ops/redis/redis.conf").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]
    settings = {words[0]: words[1:] for words in conf}
    assert settings["maxmemory-policy"] == ["noeviction"]
    assert settings["maxmemory"][0].endswith("mb") and int(settings["maxmemory"][0][:-2]) > 0
