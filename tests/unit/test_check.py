"""herd check: the verdict on pure data, and ``herd check`` as a subprocess
against real HTTP servers on loopback standing in for nodes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fake_nodes import DIGEST, FakeNode, SilentNode, refused_port, status_doc, write_config
from harness import REPO

from herd.tools.check import node_line, report
from herd.tools.survey import NodeReport

OTHER = "ffff000011112222"


def node(name: str, digest: str | None = DIGEST, clients: int | None = 12, **kw: Any) -> NodeReport:
    return NodeReport(name, status_doc(name, clients, digest, **kw), None, 0.0)


def check(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERD")}  # no secret needed
    return subprocess.run([sys.executable, "-m", "herd", "check", "--config", str(path), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60, env=env)


def test_all_well() -> None:
    text, ok = report([node("Bailey"), node("Bona")])
    assert ok
    assert text.splitlines() == [
        f"Bailey     up                12  {DIGEST}  0.2.0",
        f"Bona       up                12  {DIGEST}  0.2.0",
        f"agree: all 2 nodes hold the same 12 clients (digest {DIGEST})"]



def test_a_split_herd_is_warned_about_before_the_verdict() -> None:
    split = "herd.toml: the links leave the herd in 2 parts"
    text, ok = report([node("Bailey"), node("Bona")], warnings=[split])
    assert ok  # whether they agree now is another question
    assert text.splitlines()[-2:] == [f"warning: {split}",
                                      f"agree: all 2 nodes hold the same 12 clients (digest {DIGEST})"]


def test_every_problem_is_named() -> None:
    reports = [node("Bailey"), node("Bona", OTHER, 11), node("Campbell", None, None, redis="down"),
               NodeReport("Clark", None, "http://127.0.0.1:1/status: connection refused"),
               node("Jaquez", None)]
    text, ok = report(reports, rounds=3)
    assert not ok
    lines = text.splitlines()
    assert lines[2] == "Campbell   NO REDIS           -  -                 0.2.0"
    assert lines[3] == ("Clark      UNREACHABLE        -  -                 -  "
                        "(http://127.0.0.1:1/status: connection refused)")
    assert lines[-1] == (
        "PROBLEM: unreachable: Clark; Redis down: Campbell; no digest: Jaquez; nodes differ: "
        f"Bailey holds 12 clients (digest {DIGEST}); Bona holds 11 clients (digest {OTHER}) "
        "(read 3 times, 0.5 s apart)")


def test_same_digest_different_counts_is_a_difference() -> None:
    text, ok = report([node("Bailey", clients=12), node("Bona", clients=13)])
    assert not ok and "nodes differ" in text
    assert node_line(node("Bailey")).startswith("Bailey     up ")


def test_check_exits_0_when_all_nodes_agree(tmp_path: Path) -> None:
    nodes = [FakeNode(status_doc(n)) for n in ("Bailey", "Bona", "Clark")]
    try:
        result = check(write_config(tmp_path / "herd.toml", {
            n: f.port for n, f in zip(("Bailey", "Bona", "Clark"), nodes, strict=True)}))
        assert result.returncode == 0, result.stdout + result.stderr
        verdict = result.stdout.splitlines()[-1]
        assert verdict == f"agree: all 3 nodes hold the same 12 clients (digest {DIGEST})"
        assert [f.requests for f in nodes] == [1, 1, 1]
    finally:
        for f in nodes:
            f.close()


def test_check_reads_again_while_digests_move(tmp_path: Path) -> None:
    """Bona's first answer lags (as under load); the second agrees."""
    bailey = FakeNode(status_doc("Bailey"))
    bona = FakeNode(status_doc("Bona", 11, OTHER), status_doc("Bona"))
    try:
        result = check(write_config(tmp_path / "herd.toml", {"Bailey": bailey.port, "Bona": bona.port}))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "(read 2 times, 0.5 s apart)" in result.stdout and bona.requests == 2
    finally:
        bailey.close()
        bona.close()


def test_check_exits_1_naming_who_differs_after_three_reads(tmp_path: Path) -> None:
    bailey, bona = FakeNode(status_doc("Bailey")), FakeNode(status_doc("Bona", 11, OTHER))
    try:
        started = time.monotonic()
        result = check(write_config(tmp_path / "herd.toml", {"Bailey": bailey.port, "Bona": bona.port}))
        assert result.returncode == 1
        differ = f"nodes differ: Bailey holds 12 clients (digest {DIGEST}); Bona holds 11 clients"
        assert differ in result.stdout
        assert "(read 3 times, 0.5 s apart)" in result.stdout and bona.requests == 3
        assert time.monotonic() - started >= 1.0  # two pauses
        doc = json.loads(check(tmp_path / "herd.toml", "--json").stdout)
        assert (doc["agree"], doc["ok"]) == (False, False)
        assert doc["nodes"]["Bona"]["status"]["digest"] == OTHER
    finally:
        bailey.close()
        bona.close()


def test_check_exits_1_on_unreachable_nodes_without_waiting_on_them_twice(tmp_path: Path) -> None:
    bailey, bona, silent = FakeNode(status_doc("Bailey")), FakeNode(status_doc("Bona")), SilentNode()
    try:
        path = write_config(tmp_path / "herd.toml", {"Bailey": bailey.port, "Bona": bona.port,
                                                     "Campbell": silent.port, "Clark": refused_port(),
                                                     "Jaquez": None})
        result = check(path, "--timeout", "1")
        assert result.returncode == 1
        lines = {line.split()[0]: line for line in result.stdout.splitlines()[:-1]}
        assert lines["Bailey"] == f"Bailey     up                12  {DIGEST}  0.2.0"
        assert lines["Campbell"].endswith("/status: no answer within 1 s)")
        assert lines["Clark"].endswith("/status: connection refused)")
        assert "admin endpoint off" in lines["Jaquez"]
        assert result.stdout.splitlines()[-1] == "PROBLEM: unreachable: Campbell, Clark, Jaquez"
        assert bona.requests == 1  # the reachable nodes agree: read once
    finally:
        for server in (bailey, bona, silent):
            server.close()


def test_check_usage_and_config_errors_exit_2(tmp_path: Path) -> None:
    assert check(REPO / "config" / "herd.toml", "--timeout", "-1").returncode == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("[herd]\n")
    result = check(bad)
    assert result.returncode == 2 and result.stderr.startswith("herd: ") and "Traceback" not in result.stderr


def test_check_help_says_it_reads_again() -> None:
    result = subprocess.run([sys.executable, "-m", "herd", "check", "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert "up to 3 reads, 0.5 s apart" in " ".join(result.stdout.split())
