"""``herd lab`` for real, wherever network namespaces can be made (root,
``ip netns``, ``nft``; skipped with the reason elsewhere): nft takes every
script the lab writes; three hosts under load, partitioned and then lossy,
lose nothing and agree after each heal; a lab interrupted while it builds,
starts or holds removes everything it made; leftovers of a crashed run are
removed by name. The pure parts: tests/unit/test_lab_plan.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading

import pytest
from harness import REPO, wait_until

from herd.tools.lab import plan, rules

# -- a real lab -----------------------------------------------------------------------------


def _why_no_lab() -> str | None:
    from herd.tools.lab.netns import missing_tools

    return missing_tools()


NO_LAB = _why_no_lab()
needs_lab = pytest.mark.skipif(NO_LAB is not None, reason=f"no lab on this machine: {NO_LAB}")


def _lab_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(plan.PREFIX)]


def _herd_lab(*args: str) -> list[str]:
    return [sys.executable, "-m", "herd", "lab", *args, "--wait-lock", "300"]


@needs_lab
def test_nft_accepts_every_script_the_lab_writes() -> None:
    ns = f"{plan.PREFIX}syntax-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        h1, h2, h3 = plan.hosts(3)
        faults = [rules.partition([h1], [h2, h3]), rules.one_way([h1, h2], [h3]), rules.loss(h1, h3, 30)]
        scripts = [rules.meter_script(), rules.heal_script()]
        scripts += [script for fault in faults for script in rules.scripts(fault).values()]
        for script in scripts:
            done = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script,
                                  capture_output=True, text=True)
            assert done.returncode == 0, script + done.stderr
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)


@needs_lab
@pytest.mark.timeout(120)
def test_a_lab_is_built_observed_from_outside_and_torn_down() -> None:
    """One config for every host; herd status and herd check run in the
    observer's namespace reach every node over its admin address and agree."""
    result = subprocess.run(_herd_lab("up", "--hosts", "3", "--seed", "1"), cwd=REPO, capture_output=True,
                            text=True, timeout=100)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "$ herd status --once  (from herdlab-ops; exit 0)" in result.stdout
    assert "$ herd check  (from herdlab-ops; exit 0)" in result.stdout
    assert "agree: all 3 nodes hold the same" in result.stdout
    assert "lost 0, bogus 0; herd check from outside: agree" in result.stdout
    assert "torn down: no lab namespace, cable or bridge left" in result.stderr
    assert _lab_namespaces() == []
    assert not (REPO / "state" / "h1").exists()  # access logs go to the lab's directory


@needs_lab
@pytest.mark.timeout(200)
def test_three_hosts_partitioned_and_lossy_lose_nothing_and_agree_after_the_heal() -> None:
    """Seed 14: h3 cut from h1 and h2 for 5.9 s (past the 3 s heartbeat
    timeout: the links drop and come back), then 28 % loss on h1-h3."""
    result = subprocess.run(_herd_lab("chaos", "--hosts", "3", "--faults", "partition,loss", "--seed", "14",
                                      "--json"), cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert summary["ok"] and summary["lost"] == 0 and summary["bogus"] == 0, summary
    assert summary["acknowledged"] > 500
    assert [c["kind"] for c in summary["cycles"]] == ["partition", "loss"]
    for cycle in summary["cycles"]:
        assert cycle["converged"] and cycle["seconds"] < 10, cycle
    partition, loss = summary["cycles"]
    assert partition["detail"] == "h3 | h1,h2" and partition["lasted"] > 5.9
    assert partition["sync_bytes"] > 0  # the two sides really were apart, and caught up by SYNC
    assert loss["detail"] == "28% on h1-h3"
    assert "torn down: no lab namespace, cable or bridge left" in result.stderr
    assert _lab_namespaces() == []


@needs_lab
@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig, when", [(signal.SIGINT, "every node listening"), (signal.SIGTERM, "holding"),
                                       (signal.SIGHUP, "hosts on herdlab-br")])
def test_an_interrupted_lab_removes_everything_it_made(sig: int, when: str) -> None:
    """Interrupted while it builds, starts or holds: no namespace, cable or
    bridge stays, and no process it started."""
    proc = subprocess.Popen(_herd_lab("up", "--hosts", "2", "--hold", "60"), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(iter(proc.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        wait_until(lambda: when in "".join(err), timeout=60, what=when)
        proc.send_signal(sig)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(err)
    assert proc.returncode == 130, text
    assert "interrupted" in text
    for kept in re.findall(r"logs and Redis data kept in (/tmp/herdlab-\S+)", text):
        shutil.rmtree(kept, ignore_errors=True)
    assert _lab_namespaces() == []
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "--config /tmp/herdlab-" not in ps


@needs_lab
@pytest.mark.timeout(60)
def test_leftovers_of_a_crashed_run_are_removed_by_name() -> None:
    ns = f"{plan.PREFIX}h99"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    sleeper = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "600"])
    try:
        result = subprocess.run(_herd_lab("clean"), cwd=REPO, capture_output=True, text=True, timeout=50)
        assert result.returncode == 0, result.stderr
        assert ns in result.stdout
        assert sleeper.wait(timeout=10) == -signal.SIGKILL
        assert ns not in _lab_namespaces()
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
