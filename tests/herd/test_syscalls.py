"""The units' system call filter (``SystemCallFilter=@system-service`` less
``@privileged @resources``, in herd@.service and herd-redis@.service) allows
every call the node and its Redis make. Both run under strace through their
whole life: start-up, clients (IAMAT, WHATSAT through the places API), a peer
link over TLS, the admin endpoint, a reload, a backup (the Redis forks and
streams a snapshot), an AOF rewrite, a full Redis refusing writes, and a
clean stop. A call outside the filter would fail with EPERM under systemd."""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from cluster import Herd, talk
from harness import REPO, wait_until

from herd.tools.harness import ChildProcess

TLS = 'tls_cert = "tls/{node}.crt"\ntls_key = "tls/{node}.key"\ntls_ca = "tls/ca.crt"\n'
CALL = re.compile(r"^\d+\s+([a-z0-9_]+)\(", re.MULTILINE)


def can_trace() -> bool:
    if shutil.which("strace") is None or shutil.which("systemd-analyze") is None:
        return False
    return subprocess.run(["strace", "-f", "-o", "/dev/null", "true"], capture_output=True,
                          timeout=30).returncode == 0


pytestmark = pytest.mark.skipif(not can_trace(),
                                reason="needs strace (allowed to ptrace) and systemd-analyze")


@functools.cache
def group(name: str) -> frozenset[str]:
    """The system calls of a systemd syscall group, nested groups expanded."""
    out = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager", name], capture_output=True,
                         text=True, check=True, timeout=30).stdout
    calls: set[str] = set()
    for line in out.splitlines()[1:]:
        item = line.strip()
        if item.startswith("@"):
            calls |= group(item)
        elif item and not item.startswith("#"):
            calls.add(item)
    return frozenset(calls)


def allowed() -> frozenset[str]:
    """What the units' SystemCallFilter= lines let through."""
    return group("@system-service") - group("@privileged") - group("@resources")


def unit_filter(unit: str) -> list[str]:
    text = (REPO / "ops/systemd" / unit).read_text()
    return re.findall(r"^SystemCallFilter=(.*)$", text, re.MULTILINE)


def traced(process: ChildProcess, log: Path) -> None:
    process.argv = ["strace", "-f", "-qq", "-o", str(log), "--", *process.argv]


def stop_tracee(process: ChildProcess) -> None:
    """SIGTERM to the traced process alone (not to strace, which would stop
    tracing), and wait until both have exited: its shutdown is traced too."""
    strace = process.pid
    children = Path(f"/proc/{strace}/task/{strace}/children").read_text().split()
    os.kill(int(children[0]), signal.SIGTERM)
    assert process.wait(30) is not None, f"{process.label} did not stop"


def calls(log: Path) -> set[str]:
    return set(CALL.findall(log.read_text(errors="replace")))


@pytest.mark.timeout(240)
def test_node_and_redis_make_no_call_their_units_filter_out(tmp_path: Path) -> None:
    for unit in ("herd@.service", "herd-redis@.service"):
        assert unit_filter(unit) == ["@system-service", "~@privileged @resources"], unit
    herd = Herd(tmp_path, {"A": ["B"], "B": []}, extra_herd=TLS)
    made = subprocess.run(["bash", str(REPO / "ops/tls-certs.sh"), "--config", str(herd.config), "--out",
                           str(tmp_path / "tls")], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    node_log, redis_log = tmp_path / "node.strace", tmp_path / "redis.strace"
    traced(herd["A"], node_log)
    traced(herd["A"].redis, redis_log)
    try:
        herd.start()
        herd.wait_links(60)
        assert "peer link upgraded to TLS" in herd["A"].access_log()
        talk(herd["A"].port, "IAMAT traced +34.068930-118.445127 1700000000", "WHATSAT traced 10 5")
        for path in ("/metrics", "/status", "/healthz"):
            urllib.request.urlopen(f"http://127.0.0.1:{herd['A'].ports.admin}{path}", timeout=10).read()
        herd["A"].send_signal(signal.SIGHUP)
        wait_until(lambda: "reload: peers now" in herd["A"].log(), timeout=30, what="the reload")
        backup = subprocess.run([sys.executable, "-m", "herd", "backup", "A", "--config", str(herd.config),
                                 "--out", str(tmp_path / "backup")], cwd=REPO, capture_output=True, text=True,
                                timeout=60)
        assert backup.returncode == 0, backup.stderr
        herd["A"].redis.call("BGREWRITEAOF")
        wait_until(lambda: herd["A"].redis.info("persistence")["aof_rewrite_in_progress"] == "0", timeout=30,
                   what="the AOF rewrite")
        herd["A"].redis.call("CONFIG", "SET", "maxmemory", "1")
        assert talk(herd["A"].port, "IAMAT refused +1+1 1700000001").startswith(b"? ")
        herd["A"].redis.call("CONFIG", "SET", "maxmemory", "0")
        stop_tracee(herd["A"])
        stop_tracee(herd["A"].redis)
    finally:
        herd.stop()
    for who, log in (("the node", node_log), ("its Redis", redis_log)):
        made_calls = calls(log)
        assert {"execve", "exit_group"} <= made_calls, f"{who}: strace did not see it all ({log})"
        assert made_calls - allowed() == set(), f"{who} makes system calls its unit filters out"
