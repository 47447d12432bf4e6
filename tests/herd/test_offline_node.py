"""The offline provider end to end: a node that loads GeoNames into its own
Redis at start and answers WHATSAT from it, and ``herd places load``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from cluster import Herd, talk
from harness import REPO, wait_until


def test_node_answers_whatsat_from_the_offline_data_set(tmp_path: Path) -> None:
    herd = Herd(tmp_path, {"Solo": []}, provider="offline").start()
    try:
        wait_until(lambda: "offline places loaded" in herd["Solo"].log(), timeout=60, what="places loaded")
        at_line = talk(herd["Solo"].port, "IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1700000000").rstrip(
            b"\n"
        )
        reply = talk(herd["Solo"].port, "WHATSAT kiwi.cs.ucla.edu 20 20")
        head, body = reply.split(b"\n", 1)
        assert head == at_line and reply.endswith(b"}\n\n")
        names = [r["name"] for r in json.loads(body)["results"]]
        assert {"Beverly Hills", "Santa Monica", "Culver City"} <= set(names)
        polar = talk(herd["Solo"].port, "IAMAT polar +89.5+000.0 1700000000", "WHATSAT polar 50 5")
        assert polar.split(b"\n")[0].startswith(b"AT Solo ")
        assert json.loads(polar.split(b"\n", 2)[2])["status"] == "ZERO_RESULTS"
        assert herd["Solo"].redis.call("ZSCORE", "herd:geo", "polar") is None
        assert herd["Solo"].record("polar")[b"lat"] == b"+89.5"
    finally:
        herd.stop()


def test_a_node_loads_the_data_set_in_a_child_process(tmp_path: Path) -> None:
    """Found by a review: loading the data set held the node's interpreter
    (reading it parses 30 MB of JSON in one call), and a node started on an
    empty Redis answered nothing for 0.4-0.5 s. A child process loads it: the
    node's own CPU is a fraction of its (waited) child's."""
    herd = Herd(tmp_path, {"Solo": []}, provider="offline").start()
    try:
        wait_until(lambda: "offline places loaded" in herd["Solo"].log(), timeout=60, what="places loaded")
        fields = Path(f"/proc/{herd['Solo'].pid}/stat").read_text().rsplit(")", 1)[1].split()
        own, children = int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])
        assert own < children, (own, children)  # clock ticks: about 30 and 170 here
        assert talk(herd["Solo"].port, "IAMAT la +34.0522-118.2437 1700000000",
                    "WHATSAT la 10 1").count(b"Los Angeles") == 1
    finally:
        herd.stop()


def test_places_load_cli_is_idempotent(tmp_path: Path) -> None:
    herd = Herd(tmp_path, {"One": [], "Two": []}, provider="offline")
    config = herd.config.read_text().replace(
        'provider = "offline"', 'provider = "offline"\nmin_population = 15000'
    )
    herd.config.write_text(config)
    try:
        herd["One"].redis.start()
        herd["Two"].redis.start()
        command = [sys.executable, "-m", "herd", "places", "load", "--config", str(herd.config), "One"]
        first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert first.returncode == 0, first.stderr
        assert first.stdout.startswith("One: loaded geonames-cities15000-")
        again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert again.stdout.startswith("One: already loaded geonames-cities15000-")
        assert herd["Two"].redis.call("GET", "herd:places:version") is None
        assert first.stderr == ""
        google = herd.config.read_text().replace('provider = "offline"', 'provider = "google"')
        (tmp_path / "google.toml").write_text(google)
        noted = subprocess.run([*command[:5], "--config", str(tmp_path / "google.toml"), "One"],
                               cwd=REPO, capture_output=True, text=True, timeout=120)
        assert noted.returncode == 0 and "note: places.provider is 'google'" in noted.stderr, noted.stderr
        unknown = subprocess.run(
            [*command[:-1], "Nobody"], cwd=REPO, capture_output=True, text=True, timeout=60
        )
        assert unknown.returncode == 2 and "nodes.Nobody: no such node" in unknown.stderr
    finally:
        herd.stop()


def test_a_node_whose_redis_comes_back_empty_loads_the_places_again(tmp_path: Path) -> None:
    herd = Herd(tmp_path, {"Solo": []}, provider="offline").start()
    try:
        node = herd["Solo"]
        wait_until(lambda: "offline places loaded" in node.log(), timeout=60, what="places loaded")
        node.redis.kill()
        shutil.rmtree(node.redis.data_dir)
        node.redis.data_dir.mkdir()
        node.redis.start()  # a new, empty Redis on the same port
        wait_until(lambda: node.redis.call("GET", "herd:places:version") is not None, timeout=60,
                   what="places loaded again without a WHATSAT")
        reply = talk(node.port, "IAMAT kiwi +34.068930-118.445127 1700000000", "WHATSAT kiwi 20 3")
        assert len(json.loads(reply.split(b"\n", 2)[2])["results"]) == 3
    finally:
        herd.stop()


def test_a_stop_during_the_places_load_is_no_error(tmp_path: Path) -> None:
    # Found by a README walkthrough: Ctrl-C of a fresh herd up logged "error:
    # offline places not loaded: ... Lost connection" on every node, its own
    # stop having closed Redis under the load.
    herd = Herd(tmp_path, {"Solo": []}, provider="offline").start()
    try:
        redis = herd["Solo"].redis
        wait_until(lambda: redis.call("KEYS", "herd:places:*:loading:*") != [], timeout=60, every=0.01,
                   what="the load writing to Redis")
        assert herd["Solo"].stop() == 0
        log = herd["Solo"].log()
        assert "error" not in log, log[-2000:]
    finally:
        herd.stop()
