"""herd status against real nodes: the last update kept across a restart, and a real herd's frame."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from cluster import Herd, talk
from fake_nodes import row
from harness import REPO, herd_cli, wait_until
from twisted.internet import reactor as global_reactor

from config.loader import load_config

reactor: Any = global_reactor
FIVE = load_config(REPO / "config" / "herd.toml")  # Bailey Bona Campbell Clark Jaquez
NOW = 1733440000.0




def test_last_update_survives_a_restart(tmp_path: Path) -> None:
    """The node keeps the time of its last stored update across a restart."""
    herd = Herd(tmp_path, {"A": []}).start()
    node = herd["A"]
    try:
        talk(node.port, "IAMAT s1 +1+1 1700000000")
        wait_until(lambda: node.redis.hgetall("herd:status").get(b"last_update", b"0") != b"0",
                   what="last update published")
        before = node.redis.hgetall("herd:status")
        node.kill()
        node.start()
        wait_until(lambda: node.redis.hgetall("herd:status")[b"started"] != before[b"started"],
                   what="restarted node publishing")
        assert node.redis.hgetall("herd:status")[b"last_update"] == before[b"last_update"]
    finally:
        herd.stop()


def test_status_on_a_real_herd(tmp_path: Path) -> None:
    """Real nodes, their admin endpoints, a real herd status."""
    herd = Herd(tmp_path, {"A": ["B"], "B": []}).start()
    try:
        herd.wait_links()
        talk(herd["A"].port, "IAMAT s1 +1+1 1700000000", "IAMAT s2 +1+1 1700000000")
        wait_until(lambda: herd["B"].record("s2") != {}, what="flood")

        def once() -> subprocess.CompletedProcess[str]:
            return herd_cli("status", "--config", str(herd.config), "--once", "--timeout", "10")

        frames: list[str] = []

        def all_well() -> bool:
            run = once()
            frames.append(run.stdout)
            return run.returncode == 0

        wait_until(all_well, timeout=30, what="status all well")
        frame = frames[-1]
        assert row(frame, "A").endswith("B+") and "agreement: all 2 nodes hold the same 2 clients" in frame
        herd["B"].redis.kill()
        wait_until(lambda: row(once().stdout, "B").split()[1:3] == ["NO", "REDIS"], timeout=15,
                   what="B without Redis")
        herd["B"].redis.start()
        herd["B"].kill()
        wait_until(lambda: row(once().stdout, "B").split()[1] == "UNREACHABLE", what="B unreachable")
    finally:
        herd.stop()
