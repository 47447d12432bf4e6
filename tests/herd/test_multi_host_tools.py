"""herd check and herd status on a multi-host config (docs/OPERATIONS.md):
every node's Redis at redis://127.0.0.1:6400/0 on its own host. The tools
read each node's /status at its admin address over HTTP and never a Redis,
so the local Redis those URLs reach from here cannot pass for the herd's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from harness import REPO, RedisProcess

from config.loader import load_config
from herd.tools.survey import status_url

# TEST-NET-3 (RFC 5737): documentation addresses no machine here has.
ELSEWHERE = ("203.0.113.11", "203.0.113.12")


def multi_host_config(tmp_path: Path, redis_port: int, admin_b: str | None = None) -> Path:
    path = tmp_path / "herd.toml"
    path.write_text(
        '[herd]\nsecret_env = "HERD_SECRET"\n\n[places]\nprovider = "offline"\n'
        f'\n[nodes.A]\nhost = "{ELSEWHERE[0]}"\nport = 10000\nredis = "redis://127.0.0.1:{redis_port}/0"\n'
        'peers = ["B"]\n'
        f'\n[nodes.B]\nhost = "{ELSEWHERE[1]}"\nport = 10000\n'
        f'redis = "redis://127.0.0.1:{redis_port}/0"\npeers = ["A"]\n'
        + (f'admin = "{admin_b}"\n' if admin_b else ""))
    return path


def herd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "herd", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60)


def connections(redis: RedisProcess) -> int:
    """Connections the Redis accepted since it started (each command() is one)."""
    info = redis.call("INFO", "stats")
    assert isinstance(info, bytes)
    return int(info.split(b"total_connections_received:")[1].split(b"\r\n")[0])


def test_each_node_is_asked_at_its_own_admin_address(tmp_path: Path) -> None:
    config = load_config(multi_host_config(tmp_path, 6400, admin_b="0.0.0.0:9100"))
    assert status_url(config.nodes["A"]) == f"http://{ELSEWHERE[0]}:30000/status"  # the default port
    assert status_url(config.nodes["B"]) == f"http://{ELSEWHERE[1]}:9100/status"  # wildcard: its host


def test_check_and_status_never_read_this_machines_redis_for_other_hosts(tmp_path: Path) -> None:
    redis = RedisProcess(tmp_path / "redis").start()  # what 127.0.0.1:<port> reaches from here
    try:
        redis.call("HSET", "herd:summary", "clients", "7", "digest", "00a1b2c3d4e5f607")
        before = connections(redis)
        path = str(multi_host_config(tmp_path, redis.port))
        check = herd("check", "--config", path, "--timeout", "0.5")
        assert check.returncode == 1, check.stdout + check.stderr
        assert check.stdout.splitlines()[-1] == "PROBLEM: unreachable: A, B"
        assert f"(http://{ELSEWHERE[0]}:30000/status: " in check.stdout
        status = herd("status", "--config", path, "--once", "--json", "--timeout", "0.5")
        assert status.returncode == 1, status.stderr
        nodes = json.loads(status.stdout)["nodes"]
        assert {n: (v["state"], v["status"]) for n, v in nodes.items()} == {
            "A": ("UNREACHABLE", None), "B": ("UNREACHABLE", None)}
        assert connections(redis) == before + 1  # this count's own connection, none of the tools'
    finally:
        redis.kill()
