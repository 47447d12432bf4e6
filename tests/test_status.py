"""herd status: one frame over a real herd, and the pure renderer."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from cluster import Herd, talk
from harness import REPO, wait_until

from config.loader import load_config
from herd.tools.status import NodeView, agreement, render


def status_once(herd: Herd) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "herd", "status", "--config", str(herd.config), "--once"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_status_once_shows_nodes_links_and_agreement(tmp_path: Path) -> None:
    herd = Herd(tmp_path, {"A": ["B"], "B": ["C"], "C": []}).start()
    try:
        herd.wait_links()
        talk(herd["A"].port, "IAMAT s1 +1+1 1700000000", "IAMAT s2 +1+1 1700000000")
        wait_until(lambda: herd["C"].record("s2") != {}, what="flood")
        wait_until(lambda: "A-B up, B-C up" in status_once(herd).stdout, what="links up in status")
        result = status_once(herd)
        assert result.returncode == 0
        assert "agreement: all 3 nodes hold the same 2 clients" in result.stdout
        assert "A+ C+" in result.stdout  # B's peers, both linked
        herd["B"].redis.kill()
        rows = status_once(herd).stdout.splitlines()
        b_row = next(row for row in rows if row.startswith("B "))
        assert " NO REDIS " in b_row and b_row.endswith("A? C?"), rows  # B itself still listens
        herd["B"].redis.start()
        herd["C"].kill()
        wait_until(lambda: "B-C DOWN" in status_once(herd).stdout, timeout=15, what="link down")
        wait_until(
            lambda: any(
                row.startswith("C ") and " DOWN " in row for row in status_once(herd).stdout.splitlines()
            ),
            timeout=15,
            what="C shown down once its status goes stale",
        )
    finally:
        herd.stop()


def test_last_update_age_survives_a_restart(tmp_path: Path) -> None:
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
        row = next(r for r in status_once(herd).stdout.splitlines() if r.startswith("A "))
        assert "s ago" in row and "never" not in row, row
    finally:
        herd.stop()


def test_render_flags_disagreement_and_unreadable_nodes() -> None:
    config = load_config(REPO / "config" / "herd.toml")
    now = time.time()
    fresh = {b"updated": str(now).encode(), b"links_up": b"Bona", b"rate": b"5.0", b"last_update": b"0"}
    views = [
        NodeView(name, "x:1", fresh, {b"clients": b"1", b"digest": b"ab"}) for name in sorted(config.nodes)
    ]
    views[1] = NodeView(views[1].name, "x:1", fresh, {b"clients": b"2", b"digest": b"cd"})
    assert agreement(views, "h.toml") == (
        "agreement: NODES DIFFER (Bailey, Campbell, Clark, Jaquez: 1 clients (digest ab); "
        "Bona: 2 clients (digest cd)); herd check --config h.toml lists the clients")
    views[2] = NodeView(views[2].name, "x:1", {}, {}, "unreachable")
    frame = render(config, views, now)
    assert "unknown (1 node(s) unreadable)" in frame and "redis: unreachable" in frame
    assert "Bailey-Bona up" in frame
    campbell = next(row for row in frame.splitlines() if row.startswith("Campbell "))
    assert " DOWN " in campbell and campbell.endswith("Bailey? Bona? Jaquez?")  # links unknown


def test_a_node_whose_redis_cannot_be_read_but_listens_is_no_redis() -> None:
    """Found by an audit: such a node showed DOWN, its peers '-', while the
    links line (from its peers' reports) said its links were up."""
    config = load_config(REPO / "config" / "herd.toml")
    now = time.time()
    fresh = {b"updated": str(now).encode(), b"links_up": b"Bona,Campbell", b"last_update": b"0"}
    views = [NodeView(name, "x:1", fresh, {b"clients": b"1"}) for name in sorted(config.nodes)]
    views[0] = NodeView("Bailey", "x:1", {}, {}, "has not answered", listening=True)
    bailey = next(row for row in render(config, views, now).splitlines() if row.startswith("Bailey "))
    assert " NO REDIS " in bailey and bailey.endswith("Bona? Campbell?")


def test_a_node_that_is_down_shows_no_links_up() -> None:
    config = load_config(REPO / "config" / "herd.toml")
    now = time.time()
    stale = {b"updated": str(now - 600).encode(), b"links_up": b"Bona Campbell"}
    views = [NodeView(name, "x:1", stale, {}) for name in sorted(config.nodes)]
    bailey = next(row for row in render(config, views, now).splitlines() if row.startswith("Bailey "))
    assert " DOWN " in bailey and bailey.endswith("Bona- Campbell-")
