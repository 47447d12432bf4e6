"""Backup and restore with the AOF on (docs/OPERATIONS.md "Backing a node up",
"Restoring a node from a backup", "A node that lost its Redis"), against real
redis-server processes with the shipped config:

- ``herd backup`` while the node serves a steady stream of IAMATs gives a
  consistent snapshot holding every update acknowledged before it began;
- ``herd restore`` into an emptied Redis brings those records back, survives
  a SIGKILL of that Redis (they went through its AOF), and once the node
  starts, a full transfer from its peer brings back the rest;
- a lost Redis started empty refills from its peers until it holds exactly
  what they hold."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from cluster import Herd, talk
from harness import REPO, child_env, wait_until

from config.schema import NodeConfig, RedisAddress
from herd.tools import backup as tool
from herd.tools.harness import LocalNode, RedisProcess, free_port
from herd.tools.resp import Resp


def herd_tool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "herd", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=child_env())


class Writer(threading.Thread):
    """Sends IAMATs to a node back to back over one connection until stopped;
    records the client id of every one answered AT, in order."""

    def __init__(self, port: int, prefix: str):
        super().__init__(daemon=True)
        self.port, self.prefix = port, prefix
        self.acknowledged: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=15) as sock:
            replies = sock.makefile("rb")
            n = 0
            while not self.halt.is_set():
                client = f"{self.prefix}{n}"
                sock.sendall(f"IAMAT {client} +34.068930-118.445127 1700000000.{n}\n".encode())
                if replies.readline().startswith(b"AT "):
                    self.acknowledged.append(client)
                n += 1

    def stop(self) -> list[str]:
        self.halt.set()
        self.join(15)
        return self.acknowledged


def clients(node: LocalNode) -> dict[bytes, dict[bytes, bytes]]:
    """Every client's hash in the node's Redis."""
    keys = node.redis.call("KEYS", "herd:client:*")
    return {key: node.redis.hgetall(key) for key in keys}


def summary(node: LocalNode) -> dict[bytes, bytes]:
    return node.redis.hgetall("herd:summary")


def wipe(node: LocalNode) -> None:
    """The disaster: the node and its Redis gone, the Redis data lost. Its Redis
    comes back empty (the runbook: move the data directory away, start it)."""
    node.stop()
    node.redis.kill()
    shutil.move(node.redis.data_dir, node.redis.data_dir.with_name("redis.lost"))
    node.redis.start()


def backup(herd: Herd, name: str, out: Path) -> Path:
    result = herd_tool("backup", name, "--config", herd.config, "--out", out)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"backup of node {name} (Redis 127.0.0.1:{herd[name].redis.port}): ")
    assert "keys (checked with redis-check-rdb)" in result.stdout or shutil.which("redis-check-rdb") is None
    files = sorted(out.glob(f"{name}-*.rdb"))
    assert len(files) == 1 and files[0].stat().st_mode & 0o077 == 0
    return files[0]


@pytest.mark.timeout(180)
def test_backup_while_serving_then_restore_after_losing_the_redis(tmp_path: Path) -> None:
    herd = Herd(tmp_path, {"A": ["B"], "B": []}).start()
    try:
        herd.wait_links()
        writer = Writer(herd["A"].port, "w")
        writer.start()
        wait_until(lambda: len(writer.acknowledged) >= 200, timeout=30, what="200 updates acknowledged")
        before_backup = list(writer.acknowledged)  # all acknowledged before the backup began
        saved = backup(herd, "A", tmp_path / "backups")
        wait_until(lambda: len(writer.acknowledged) >= len(before_backup) + 100, timeout=30,
                   what="100 more updates after the backup")
        everything = writer.stop()
        talk(herd["B"].port, "IAMAT on.b.after.backup +1+1 1700000001")

        refused = herd_tool("restore", "A", "--config", herd.config, "--from", saved)
        assert refused.returncode == 1
        assert refused.stderr.startswith(f"herd restore: node A still accepts clients at 127.0.0.1:"
                                         f"{herd['A'].port}: stop it first")

        wipe(herd["A"])
        assert clients(herd["A"]) == {}
        restored = herd_tool("restore", "A", "--config", herd.config, "--from", saved)
        assert restored.returncode == 0, restored.stderr
        assert restored.stdout.startswith(f"restored node A from {saved}: ")
        held = {key.removeprefix(b"herd:client:").decode() for key in clients(herd["A"])}
        assert set(before_backup) <= held <= set(everything)  # a consistent snapshot
        assert herd["A"].redis.call("EXISTS", "herd:peer:B", "herd:journal:epoch") == 0  # reset

        herd["A"].redis.kill()  # SIGKILL: the restored records are in its AOF
        herd["A"].redis.start()
        assert {key.removeprefix(b"herd:client:").decode() for key in clients(herd["A"])} == held

        herd["A"].start()  # a full transfer from B brings back the rest, A's own updates included
        wait_until(lambda: summary(herd["A"]) == summary(herd["B"]), timeout=30,
                   what="A to hold what B holds")
        assert clients(herd["A"]) == clients(herd["B"])
        assert len(clients(herd["A"])) == len(everything) + 1
        # (a node's /status reads its summary once a second: the verdict may lag the last store)
        wait_until(lambda: herd_tool("check", "--config", herd.config).returncode == 0, what="herd check")
    finally:
        herd.stop()


@pytest.mark.timeout(120)
def test_a_node_without_peers_serves_exactly_its_backup_after_a_restore(tmp_path: Path) -> None:
    herd = Herd(tmp_path, {"A": []}).start()
    try:
        for n in range(50):
            assert talk(herd["A"].port, f"IAMAT kept{n} +1+1 1700000000.{n}").startswith(b"AT A ")
        saved = backup(herd, "A", tmp_path / "backups")
        kept = clients(herd["A"])
        talk(herd["A"].port, "IAMAT after.backup +1+1 1700000000")
        wipe(herd["A"])
        assert herd_tool("restore", "A", "--config", herd.config, "--from", saved).returncode == 0
        herd["A"].start()
        assert clients(herd["A"]) == kept
        reply = talk(herd["A"].port, "IAMAT kept7 +1+1 1700000000.7", "IAMAT new +2+2 1700000002")
        assert reply.count(b"AT A ") == 2
        assert herd["A"].record("kept7")[b"at"] == kept[b"herd:client:kept7"][b"at"]  # not newer: kept
        assert herd["A"].record("after.backup") == {}
    finally:
        herd.stop()


@pytest.mark.timeout(120)
def test_a_lost_redis_started_empty_refills_from_its_peers(tmp_path: Path) -> None:
    herd = Herd(tmp_path, {"A": ["B", "C"], "B": ["C"], "C": []}).start()
    try:
        herd.wait_links()
        for n in range(60):
            talk(herd["ABC"[n % 3]].port, f"IAMAT c{n} +{n % 80}-{n % 170} 1700000000.{n}")
        wait_until(lambda: summary(herd["A"]) == summary(herd["B"]) == summary(herd["C"])
                   and summary(herd["A"]).get(b"clients") == b"60", what="the herd to agree")
        wipe(herd["A"])
        herd["A"].start()
        wait_until(lambda: summary(herd["A"]) == summary(herd["B"]), timeout=30, what="A refilled")
        assert clients(herd["A"]) == clients(herd["B"]) == clients(herd["C"])
        wait_until(lambda: herd_tool("check", "--config", herd.config).returncode == 0, what="herd check")
    finally:
        herd.stop()


def test_unreachable_redis_damaged_backup_and_unknown_node_fail_in_one_line(tmp_path: Path) -> None:
    herd = Herd(tmp_path, {"A": []})
    try:
        result = herd_tool("backup", "A", "--config", herd.config, "--out", tmp_path / "b")
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == [
            f"herd backup: cannot reach Redis 127.0.0.1:{herd['A'].redis.port}: Connection refused"]
        assert not list((tmp_path / "b").iterdir())

        herd["A"].redis.start()
        herd["A"].redis.call("SET", "herd:untouched", "1")
        damaged = tmp_path / "damaged.rdb"
        damaged.write_bytes(b"REDIS0010" + b"\xff" * 40)
        result = herd_tool("restore", "A", "--config", herd.config, "--from", damaged)
        assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith(f"herd restore: {damaged}: ")
        assert herd["A"].redis.call("GET", "herd:untouched") == b"1"  # nothing was changed

        unknown = herd_tool("backup", "Z", "--config", herd.config)
        assert unknown.returncode == 2 and "no node 'Z'" in unknown.stderr
    finally:
        herd.stop()


def test_restore_copies_only_the_nodes_prefix_and_db_with_a_password_and_ttls(tmp_path: Path) -> None:
    """Another node's keys (another prefix, another db) in the same Redis are
    left alone; expiry times survive; a password-protected Redis works."""
    redis = RedisProcess(tmp_path / "redis", password="pw").start()
    try:
        address = RedisAddress(f"redis://:pw@127.0.0.1:{redis.port}/2", "127.0.0.1", redis.port, 2, "pw")
        node = NodeConfig("N", "127.0.0.1", free_port(), address, prefix="n1:")

        _in_db(redis, 2, "HSET", "n1:client:x", "at", "AT N +0 x +1+1 1")
        _in_db(redis, 2, "SET", "n1:cache:y", "v", "EX", "1000")
        _in_db(redis, 2, "HSET", "n1:peer:P", "epoch", "E", "pos", "1-0")
        _in_db(redis, 2, "SET", "other:key", "before")
        _in_db(redis, 0, "SET", "n1:db0", "before")
        saved, _, _ = tool.backup(address, "N", tmp_path / "b")

        _in_db(redis, 2, "DEL", "n1:client:x")
        _in_db(redis, 2, "SET", "n1:client:new", "gone after the restore")
        _in_db(redis, 2, "SET", "other:key", "after")
        _in_db(redis, 0, "SET", "n1:db0", "after")
        copied, _ = tool.restore(node, "N", saved)
        assert copied == 3  # the client, the cache entry and the peer offset (then reset)
        assert _in_db(redis, 2, "HGET", "n1:client:x", "at") == b"AT N +0 x +1+1 1"
        assert _in_db(redis, 2, "EXISTS", "n1:client:new", "n1:peer:P") == 0
        assert 900 < _in_db(redis, 2, "TTL", "n1:cache:y") <= 1000
        assert _in_db(redis, 2, "GET", "other:key") == b"after"
        assert _in_db(redis, 0, "GET", "n1:db0") == b"after"
    finally:
        redis.stop()


def _in_db(redis: RedisProcess, db: int, *args: str) -> Any:
    with Resp(redis.port, password="pw") as r:
        r.command("SELECT", db)
        return r.command(*args)
