"""herd check and herd status on a multi-host config (docs/OPERATIONS.md):
every node's Redis at redis://127.0.0.1:6400/0 on its own host. From one
machine those URLs all reach the local Redis; the tools must not read it once
per node and call the herd in agreement."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from harness import REPO, RedisProcess

from config.loader import load_config, redis_on_other_machines
from herd.tools.check import is_this_machine, unreachable_here

# TEST-NET-3 (RFC 5737): documentation addresses no machine here has.
ELSEWHERE = ("203.0.113.11", "203.0.113.12")


def multi_host_config(tmp_path: Path, redis_port: int, hosts: tuple[str, str] = ELSEWHERE,
                      b_redis_port: int | None = None) -> Path:
    path = tmp_path / "herd.toml"
    path.write_text(
        '[herd]\nsecret_env = "HERD_SECRET"\n\n[places]\nprovider = "offline"\n'
        f'\n[nodes.A]\nhost = "{hosts[0]}"\nport = 10000\nredis = "redis://127.0.0.1:{redis_port}/0"\n'
        'peers = ["B"]\n'
        f'\n[nodes.B]\nhost = "{hosts[1]}"\nport = 10000\n'
        f'redis = "redis://127.0.0.1:{b_redis_port or redis_port}/0"\npeers = ["A"]\n')
    return path


def herd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "herd", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60)


def test_loopback_redis_of_nodes_on_other_hosts_is_theirs(tmp_path: Path) -> None:
    config = load_config(multi_host_config(tmp_path, 6400))
    assert redis_on_other_machines(config) == {"A": ELSEWHERE[0], "B": ELSEWHERE[1]}
    assert set(unreachable_here(config)) == {"A", "B"}
    assert "loopback of its host 203.0.113.11, not of this machine" in unreachable_here(config)["A"]
    assert redis_on_other_machines(load_config(REPO / "config" / "herd.toml")) == {}  # all here
    tunnels = load_config(multi_host_config(tmp_path, 16401, b_redis_port=16402))
    assert unreachable_here(tunnels) == {}  # a loopback port per node: an SSH tunnel each, read here


def test_a_host_of_this_machine_can_read_its_own_redis(tmp_path: Path) -> None:
    assert is_this_machine("127.0.0.1") and is_this_machine("localhost")
    assert not is_this_machine(ELSEWHERE[0])
    assert not is_this_machine("no-such-host.invalid")
    here = next((a for a in subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
                 if ":" not in a), None)
    if here is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    config = load_config(multi_host_config(tmp_path, 6400, (here, ELSEWHERE[1])))
    assert set(unreachable_here(config)) == {"B"}  # A runs here: its loopback Redis is this one


def test_check_and_status_do_not_read_this_machines_redis_as_other_hosts(tmp_path: Path) -> None:
    redis = RedisProcess(tmp_path / "redis").start()  # what 127.0.0.1:<port> reaches from here
    try:
        path = str(multi_host_config(tmp_path, redis.port))
        check = herd("check", "--config", path)
        assert check.returncode == 1, check.stdout + check.stderr
        assert "agree: all nodes" not in check.stdout
        assert "A: unreadable (its Redis 127.0.0.1:" in check.stdout
        assert "B: unreadable (its Redis 127.0.0.1:" in check.stdout
        status = herd("status", "--config", path, "--once")
        assert status.returncode == 0, status.stderr
        assert "loopback of its host 203.0.113.12, not of this machine" in status.stdout
        rows = {row.split()[0]: row.split()[2] for row in status.stdout.splitlines()
                if row[:2] in ("A ", "B ")}
        assert rows == {"A": "REMOTE", "B": "REMOTE"}, status.stdout
        assert "links: A-B ?" in status.stdout
        assert "agreement: unknown (2 node(s) unreadable)" in status.stdout
    finally:
        redis.kill()
