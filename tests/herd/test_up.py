"""``herd up`` and the ops scripts: a real two-node herd with real redis-servers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from config.loader import load_config
from herd.tools.harness import (
    REPO,
    ChildProcess,
    NodePorts,
    RedisProcess,
    child_env,
    free_port,
    free_ports,
    node_section,
    port_open,
    redis_ping,
    wait_until,
)
from herd.tools.up import Output


def write_config(tmp_path: Path, ports: dict[str, tuple[int, int]],
                 secret_env: str = "HERD_SECRET") -> Path:
    """A herd TOML with one node per entry of ``ports`` (name: (node port, Redis
    port)), every node linked to every other."""
    text = [f'[herd]\nsecret_env = "{secret_env}"\n\n[places]\nprovider = "offline"\n']
    for name, (port, redis_port) in ports.items():
        text.append(node_section(name, "127.0.0.1", NodePorts(port, *free_ports(2)),
                                 f"redis://127.0.0.1:{redis_port}/0", [p for p in ports if p != name]))
    path = tmp_path / "herd.toml"
    path.write_text("\n".join(text))
    return path


def herd_up(config: Path, state: Path, log: Path = Path("/dev/null"), *more: str) -> ChildProcess:
    """``herd up`` on ``config`` and ``state`` (not started; ``more``: its
    other options), its output to ``log``."""
    argv = [sys.executable, "-m", "herd", "up", "--config", str(config), "--state-dir", str(state), *more]
    return ChildProcess("herd up", argv, log, env={"HERD_SECRET": "test-secret"})


def redis_answers(port: int) -> bool:
    return redis_ping(port) == b"PONG"


def has_handshake(access_log: Path) -> bool:
    return access_log.exists() and "HERD-HELLO" in access_log.read_text()


def live_processes() -> Iterator[tuple[int, str]]:
    """Each live process's pid and command line (Linux)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        yield int(cmdline.parent.name), text


def processes_mentioning(*needles: str) -> list[str]:
    """Command lines of live processes that contain any of ``needles``."""
    return [text for _, text in live_processes() if any(n in text for n in needles)]


def pids_of(needle: str) -> list[int]:
    """Live processes whose command line contains ``needle``."""
    return [pid for pid, text in live_processes() if needle in text]


def test_up_runs_a_two_node_herd_and_stops_it_on_sigint(tmp_path: Path) -> None:
    ports = {"Bailey": (free_port(), free_port()), "Bona": (free_port(), free_port())}
    config = write_config(tmp_path, ports)
    state = tmp_path / "state"
    up = herd_up(config, state, tmp_path / "up.out").start()
    try:
        for name, (port, redis_port) in ports.items():
            wait_until(partial(redis_answers, redis_port), timeout=20, what=f"{name}'s Redis")
            wait_until(partial(port_open, port), timeout=20, what=f"node {name}")
        for name in ports:  # linked: each access log has a handshake
            access = state / name / "access.log"
            wait_until(partial(has_handshake, access), timeout=20,
                       what=f"{name}'s handshake in its access log")
        up.send_signal(signal.SIGINT)
        status = up.wait(timeout=60)
    finally:
        up.stop(timeout=60)  # SIGTERM: the way that also stops its children
    output = up.log()
    assert status == 0, output
    assert output.endswith("herd up: stopped\n"), output[-500:]
    assert "Ready to accept connections" not in output
    for name, (port, redis_port) in ports.items():
        assert not port_open(port) and not port_open(redis_port), output
        assert f"127.0.0.1:{port}" in output  # the banner names every node's address
        assert (state / name / "herd.log").is_file()
        # Redis's output goes to its rotated log, not to ours; each node's
        # access log is in its state directory (the peer handshakes at least).
        assert "Ready to accept connections" in (state / name / "redis" / "redis.log").read_text()
        assert "HERD-HELLO" in (state / name / "access.log").read_text()
        assert list((state / name / "redis").glob("appendonlydir/appendonly.aof*")), name
    leftovers = processes_mentioning(str(config),
                                     *(f"127.0.0.1:{r}" for _, r in ports.values()))
    assert leftovers == []


def test_up_with_json_logs_writes_one_json_object_a_line(tmp_path: Path) -> None:
    # Found by a review: each node's JSON line came prefixed "Solo | ", and
    # herd up's own lines were text.
    port = free_port()
    config = write_config(tmp_path, {"Solo": (port, free_port())})
    up = herd_up(config, tmp_path / "state", tmp_path / "up.out", "--log-format", "json").start()
    try:
        # Ready, not only listening: a node stopped before its reactor runs
        # has not written its buffered first lines (CI failed on that race).
        wait_until(lambda: "ready: serving clients" in up.log(), timeout=20, what="node Solo ready")
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
    finally:
        up.stop(timeout=60)
    records = [json.loads(line) for line in up.log().splitlines()]  # every line one JSON object
    assert all(isinstance(r, dict) and {"time", "level", "message"} <= r.keys() for r in records)
    assert any(r["node"] == "Solo" and "starting" in r["message"] for r in records)
    assert records[-1]["message"] == "herd up: stopped" and records[-1]["node"] is None
    assert {r["level"] for r in records if r["node"] is None} == {"info"}  # no trouble said


def test_up_json_lines_carry_the_level_of_what_they_say() -> None:
    out = Output(4, json_lines=True)
    said = json.loads(out._line(None, "herd up: Solo exited with code 1; restarting in 1 s", "error"))
    assert (said["node"], said["level"]) == (None, "error")
    traceback = json.loads(out._line("Solo", "Traceback (most recent call last):"))
    assert (traceback["node"], traceback["level"]) == ("Solo", "error")  # not its JSON: trouble
    own = '{"time": "t", "node": "Solo", "level": "warning", "message": "m"}'
    assert out._line("Solo", own) == own + "\n"  # a node's JSON as it wrote it


def test_up_leaves_its_own_lines_below_the_log_level_out(capsys: pytest.CaptureFixture[str]) -> None:
    """Found by a review: --log-level warning still printed herd up's info lines."""
    out = Output(4, level="warning")
    out.say("4 nodes running")
    out.say("Solo restarted (restart 1)", "warning")
    assert capsys.readouterr().out == "herd up: Solo restarted (restart 1)\n"


def test_children_stop_when_herd_up_is_killed(tmp_path: Path) -> None:
    port, redis_port = free_port(), free_port()
    config = write_config(tmp_path, {"Solo": (port, redis_port)})
    up = herd_up(config, tmp_path / "state", tmp_path / "up.out").start()
    try:
        wait_until(partial(redis_answers, redis_port), timeout=20, what="Solo's Redis")
        wait_until(partial(port_open, port), timeout=20, what="node Solo")
    finally:
        up.kill()
    wait_until(lambda: processes_mentioning(str(config), f"127.0.0.1:{redis_port}") == [], timeout=20,
               what="the node and its Redis exiting")  # redis-server shows its address as its title
    assert not port_open(port) and not port_open(redis_port)


def test_a_node_refused_by_its_configuration_is_not_restarted(tmp_path: Path) -> None:
    port, redis_port = free_port(), free_port()
    config = write_config(tmp_path, {"Solo": (port, redis_port)})
    up = herd_up(config, tmp_path / "state", tmp_path / "up.out").start()
    try:
        wait_until(partial(port_open, port), timeout=20, what="node Solo")
        config.write_text(config.read_text() + "bogus_key = 1\n")  # broken under the running herd
        [node] = pids_of(f"serve Solo --config {config}")
        os.kill(node, signal.SIGKILL)
        wait_until(lambda: "not restarting it" in up.log(), timeout=20, what="herd up giving up on Solo")
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
    finally:
        up.stop(timeout=60)
    output = up.log()
    assert output.count("Solo exited with code 2, a configuration error; not restarting it") == 1, output
    assert "restarted (restart 2)" not in output, output


def test_up_without_the_secret_exits_2_with_one_line_naming_the_variable(
        tmp_path: Path) -> None:
    variable = "HERD_TEST_SECRET_THAT_IS_NEVER_SET"
    config = write_config(tmp_path, {"Bailey": (free_port(), free_port())}, variable)
    env = child_env()
    env.pop(variable, None)
    result = subprocess.run(herd_up(config, tmp_path / "state").argv, env=env,
                            capture_output=True, timeout=60)
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and variable in lines[0], lines
    assert not (tmp_path / "state").exists()  # nothing was started


def test_a_second_up_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    """Even with other ports: two Redis appending to one AOF would corrupt it."""
    port, redis_port = free_port(), free_port()
    first = write_config(tmp_path, {"Solo": (port, redis_port)})
    state = tmp_path / "state"
    up = herd_up(first, state, tmp_path / "up.out").start()
    try:
        wait_until(partial(port_open, port), timeout=20, what="node Solo")
        other = tmp_path / "other"
        other.mkdir()
        second_ports = (free_port(), free_port())
        second = write_config(other, {"Solo": second_ports})
        result = subprocess.run(herd_up(second, state).argv, env=child_env(HERD_SECRET="test-secret"),
                                capture_output=True, timeout=60)
        assert result.returncode == 1, result.stderr
        message = result.stderr.decode().strip()
        assert message == f"herd up: state directory {state} is in use by another herd up (pid {up.pid})"
        assert not port_open(second_ports[1]) and not port_open(second_ports[0])
        # Its Redis holds the lock as well, so a herd up killed before its Redis
        # exited leaves no way in for a second one while that Redis writes.
        holders = [fd.parent.parent.name for fd in Path("/proc").glob("[0-9]*/fd/*")
                   if _points_to(fd, state / "herd-up.lock")]
        assert str(up.pid) in holders and len(holders) == 2, holders
    finally:
        up.stop(timeout=60, sig=signal.SIGINT)
    up.start()
    try:  # the lock went with the process
        wait_until(partial(port_open, port), timeout=20, what="node Solo again")
    finally:
        up.stop(timeout=60, sig=signal.SIGINT)


def _points_to(fd: Path, target: Path) -> bool:
    try:
        return Path(os.readlink(fd)) == target
    except OSError:
        return False  # gone meanwhile, or not ours to read


def test_up_refuses_nodes_that_would_share_a_redis_here(tmp_path: Path) -> None:
    """Review: a multi-host config (each node's Redis at 127.0.0.1:6400 on its
    own host) is valid, but herd up runs every node on this machine."""
    config = tmp_path / "herd.toml"
    config.write_text('[herd]\nsecret_env = "HERD_SECRET"\n[places]\nprovider = "offline"\n'
                      '[nodes.A]\nhost = "10.0.0.11"\nport = 10000\nredis = "redis://127.0.0.1:6400/0"\n'
                      'peers = ["B"]\n[nodes.B]\nhost = "10.0.0.12"\nport = 10000\n'
                      'redis = "redis://127.0.0.1:6400/0"\npeers = []\n')
    result = subprocess.run(herd_up(config, tmp_path / "state").argv, env=child_env(HERD_SECRET="s"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert result.stderr == ("herd up: nodes A and B would share Redis port 6400, database 0, prefix 'herd:' "
                             "on this machine (herd up runs every node here)\n")
    assert not (tmp_path / "state").exists()


def test_up_checks_what_serve_checks_before_starting_anything(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"Bailey": (free_port(), free_port())})
    text = config.read_text().replace('provider = "offline"',
                                      'provider = "google"\nkey_env = "HERD_TEST_KEY_NEVER_SET"')
    config.write_text(text)
    env = child_env(HERD_SECRET="test-secret")
    env.pop("HERD_TEST_KEY_NEVER_SET", None)
    result = subprocess.run(herd_up(config, tmp_path / "state").argv, env=env,
                            capture_output=True, timeout=60)
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert lines == [f"herd: {config}: places.key_env: environment variable HERD_TEST_KEY_NEVER_SET "
                     "is not set, or empty or blank"], lines
    assert not (tmp_path / "state").exists()  # nothing was started


def test_up_refuses_an_access_log_it_cannot_open_before_starting_anything(tmp_path: Path) -> None:
    # Found by a review: each node exited 1 at start, and herd up restarted it forever.
    config = write_config(tmp_path, {"Bailey": (free_port(), free_port())})
    (tmp_path / "file").write_text("not a directory")
    access_log = f'access_log = "{tmp_path}/file/{{node}}.log"'
    config.write_text(config.read_text().replace('secret_env = "HERD_SECRET"',
                                                 f'secret_env = "HERD_SECRET"\n{access_log}'))
    result = subprocess.run(herd_up(config, tmp_path / "state").argv,
                            env=child_env(HERD_SECRET="test-secret"), capture_output=True, timeout=60)
    assert (result.returncode, result.stderr.decode()) == (
        2, f"herd: {config}: herd.access_log: cannot open '{tmp_path}/file/Bailey.log' (for node Bailey): "
           "Not a directory\n")
    assert list((tmp_path / "state").iterdir()) == [tmp_path / "state" / "herd-up.lock"]  # nothing started


def test_up_refuses_a_taken_admin_port_before_starting_anything(tmp_path: Path) -> None:
    """Found by a review: with a node's admin port taken, herd up said the herd
    was running and restarted that node every second."""
    config = write_config(tmp_path, {"Bailey": (free_port(), free_port())})
    host, port = load_config(config).nodes["Bailey"].admin or ("", 0)
    with socket.create_server((host, port)):
        result = subprocess.run(herd_up(config, tmp_path / "state").argv,
                                env=child_env(HERD_SECRET="test-secret"), capture_output=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert f"port {port} (node Bailey's admin port) is already in use" in result.stderr.decode()
    assert not (tmp_path / "state" / "Bailey" / "redis").exists()  # nothing was started


def test_up_refuses_a_redis_port_that_a_running_redis_holds(tmp_path: Path) -> None:
    redis = RedisProcess(tmp_path / "theirs").start()
    try:
        redis.call("SET", "theirs", "kept")
        config = write_config(tmp_path, {"Bailey": (free_port(), redis.port)})
        result = subprocess.run(herd_up(config, tmp_path / "state").argv,
                                env=child_env(HERD_SECRET="test-secret"),
                                capture_output=True, timeout=60)
        assert result.returncode == 1, result.stderr
        assert f"port {redis.port}" in result.stderr.decode()
        assert redis.call("GET", "theirs") == b"kept"
    finally:
        redis.stop()


def test_one_redis_per_distinct_local_port_and_none_for_a_remote_one() -> None:
    from config.schema import HerdConfig, NodeConfig, RedisAddress
    from herd.tools.up import LocalRedis, plan_redis_servers

    def node(name: str, port: int, host: str, redis_port: int) -> NodeConfig:
        url = f"redis://{host}:{redis_port}/0"
        return NodeConfig(name, "127.0.0.1", port, RedisAddress(url, host, redis_port))

    nodes = [node("Bona", 1, "127.0.0.1", 6400), node("Bailey", 2, "127.0.0.1", 6400),
             node("Clark", 3, "localhost", 6401), node("Jaquez", 4, "10.1.2.3", 6402)]
    config = HerdConfig("herd.toml", {n.name: n for n in nodes})
    assert plan_redis_servers(config) == [LocalRedis(6400, ("127.0.0.1",), "Bailey"),
                                          LocalRedis(6401, ("127.0.0.1",), "Clark")]


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "ops").glob("*.sh")))
def test_ops_script_parses(script: str) -> None:
    result = subprocess.run(["bash", "-n", str(REPO / "ops" / script)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_up_rotates_what_it_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """herd.log and redis.log are rotated by size, with LOG_KEEP old files."""
    import io

    from herd.tools import up

    monkeypatch.setattr(up, "LOG_MAX_BYTES", 1000)
    monkeypatch.setattr(up, "LOG_KEEP", 2)
    out = up.Output(width=4)
    lines = b"".join(b"line %04d of a node's output\n" % i for i in range(500))  # 30 bytes each
    out.relay("Solo", io.BytesIO(lines), tmp_path / "Solo" / "herd.log", echo=False)
    assert sorted(p.name for p in (tmp_path / "Solo").iterdir()) == ["herd.log", "herd.log.1", "herd.log.2"]
    assert all(p.stat().st_size <= 1000 for p in (tmp_path / "Solo").iterdir())
    assert (tmp_path / "Solo" / "herd.log").read_bytes().endswith(b"line 0499 of a node's output\n")
    kept = b"".join((tmp_path / "Solo" / n).read_bytes() for n in ("herd.log.2", "herd.log.1", "herd.log"))
    assert lines.endswith(kept) and kept.startswith(b"line ")  # the newest output, no line split


def test_up_gives_each_node_its_state_directory_and_redis_a_pipe(tmp_path: Path) -> None:
    from herd.tools import up

    path = write_config(tmp_path, {"Solo": (free_port(), free_port())})
    log_args = ["--log-format", "json", "--log-level", "warning"]
    node = up.node_child("Solo", load_config(path), str(path), log_args, tmp_path)
    assert node.process.env == {"STATE_DIRECTORY": str((tmp_path / "Solo").resolve())}
    assert node.process.argv[-4:] == log_args  # herd up's --log-format and --log-level, for each node
    redis = up.redis_child(up.LocalRedis(6400, ("127.0.0.1",), "Solo"), tmp_path, 0)
    argv = redis.process.argv
    assert argv[argv.index("--logfile") + 1] == ""  # stdout, which herd up rotates
    assert redis.process.log_path == (tmp_path / "Solo" / "redis" / "redis.log").resolve()
    assert redis.process.pipe and not redis.echo
