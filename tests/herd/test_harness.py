"""herd.tools.harness with real processes: ports, waits, redis-server and node
processes (start, ready, stop, kill -9, pause), and a LocalHerd that cleans up
after itself whatever happens."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from functools import partial
from pathlib import Path

import pytest

from herd.tools.harness import (
    ChildProcess,
    HarnessError,
    LocalHerd,
    NodeProcess,
    RedisProcess,
    WaitTimeout,
    describe_exit,
    free_port,
    free_ports,
    port_open,
    redis_ping,
    stop_all,
    wait_until,
)

PYTHON = sys.executable


def python(code: str) -> list[str]:
    return [PYTHON, "-c", textwrap.dedent(code)]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"


# -- ports and waits ------------------------------------------------------------


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = free_ports(20)
    assert len(set(ports)) == 20
    assert all(20000 <= p < low for p in ports) or low <= 21000
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[0]))


def test_wait_until_returns_true_times_out_naming_what_or_stops() -> None:
    assert wait_until(lambda: True) is True
    with pytest.raises(TimeoutError, match="timed out after 0.05 s waiting for the moon"):
        wait_until(lambda: False, 0.05, "the moon")
    stop = threading.Event()
    stop.set()
    assert wait_until(lambda: False, 10, stop=stop) is False


def test_describe_exit() -> None:
    assert describe_exit(0) == "exited with code 0"
    assert describe_exit(-9) == "was killed by SIGKILL"
    assert describe_exit(None) == "has not exited"


# -- child processes -------------------------------------------------------------


def test_a_child_runs_in_its_own_session_with_env_and_log(tmp_path: Path) -> None:
    code = "import os; print(os.environ['WHO'], os.getsid(0) == os.getpid())"
    child = ChildProcess("printer", python(code), tmp_path / "log" / "out.log", env={"WHO": "base"},
                         mark_starts=True)
    child.start()
    assert child.wait(10) == 0 and child.exit_code == 0
    child.start(env={"WHO": "override"})
    assert child.wait(10) == 0
    log = child.log()
    assert "base True\n" in log and "override True\n" in log
    assert log.count("=== start ") == 2 and "=== start 2 of printer at " in log


def test_a_piped_child_leaves_its_output_to_the_owner(tmp_path: Path) -> None:
    child = ChildProcess("piped", python("import sys; print('out'); print('err', file=sys.stderr)"),
                         tmp_path / "piped.log", pipe=True).start()
    assert child.stdout is not None
    assert sorted(child.stdout.read().split()) == [b"err", b"out"]
    assert child.wait(10) == 0


def test_stop_escalates_to_sigkill_and_tells_overdue(tmp_path: Path) -> None:
    stubborn = ChildProcess("stubborn", python("""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print('ready', flush=True)
        time.sleep(60)"""), tmp_path / "stubborn.log")
    polite = ChildProcess("polite", python("import time; print('ready', flush=True); time.sleep(60)"),
                          tmp_path / "polite.log")

    def ready(p: ChildProcess) -> bool:
        return "ready" in p.log()

    for p in (stubborn, polite):
        p.start()
        wait_until(partial(ready, p), what=f"{p.label} ready")
    late: list[str] = []
    stop_all([stubborn, polite], 0.5, overdue=lambda p: late.append(p.label))
    assert late == ["stubborn"]
    assert stubborn.exit_code == -signal.SIGKILL and polite.exit_code == -signal.SIGTERM


def test_starting_a_running_child_is_refused(tmp_path: Path) -> None:
    with ChildProcess("sleeper", ["sleep", "60"], tmp_path / "sleep.log") as child:
        child.start()
        with pytest.raises(HarnessError, match="sleeper is running already"):
            child.start()
    assert not child.alive() and child.exit_code == -signal.SIGTERM


def test_a_child_ignoring_sigint_keeps_running_on_it(tmp_path: Path) -> None:
    with ChildProcess("deaf", ["sleep", "60"], tmp_path / "deaf.log") as child:
        child.start(ignore_sigint=True)
        child.send_signal(signal.SIGINT)
        assert child.wait(0.3) is None


def test_children_get_sigterm_when_their_owner_is_killed(tmp_path: Path) -> None:
    """An owner killed outright (kill -9) leaves nothing running behind it."""
    owner = ChildProcess("owner", python(f"""
        import time
        from pathlib import Path
        from herd.tools.harness import ChildProcess
        child = ChildProcess("orphan", ["sleep", "60"], Path({str(tmp_path / "orphan.log")!r})).start()
        print(child.pid, flush=True)
        time.sleep(60)"""), tmp_path / "owner.log").start()
    wait_until(lambda: owner.log().strip().isdigit(), what="the owner to start its child")
    orphan = int(owner.log())
    assert not gone(orphan)
    owner.kill()
    wait_until(lambda: gone(orphan), 5, "the child to get SIGTERM")


# -- Redis and nodes -------------------------------------------------------------


def test_redis_process_serves_pauses_and_keeps_its_data_over_kill_9(tmp_path: Path) -> None:
    redis = RedisProcess(tmp_path / "redis", snapshots=False)
    assert redis_ping(redis.port) is None  # not started
    with redis:
        redis.start()
        assert redis.call("SET", "k", "v") == b"OK" and redis.call("PING") == b"PONG"
        assert redis.info("persistence")["aof_enabled"] == "1"
        assert redis.call("CONFIG", "GET", "save") == [b"save", b""]
        redis.pause()
        assert redis_ping(redis.port, timeout=0.3) is None  # accepted, never answered
        redis.resume()
        assert redis_ping(redis.port) == b"PONG"
        redis.pause()
        assert redis.stop() == 0  # SIGTERM reaches a paused process too
        redis.start()
        assert redis.kill() == -signal.SIGKILL
        redis.start()
        assert redis.call("GET", "k") == b"v"  # from the AOF
        assert redis.stop() == 0
    assert not port_open(redis.port)


def test_redis_process_with_a_password(tmp_path: Path) -> None:
    with RedisProcess(tmp_path / "redis", password="pw", appendfsync="everysec") as redis:
        redis.start()
        assert redis_ping(redis.port).startswith(b"NOAUTH")  # type: ignore[union-attr]
        assert redis.call("CONFIG", "GET", "appendfsync") == [b"appendfsync", b"everysec"]


def test_a_redis_that_cannot_start_is_one_error_naming_its_log(tmp_path: Path) -> None:
    (tmp_path / "bad.conf").write_text("no-such-directive yes\n")
    redis = RedisProcess(tmp_path / "redis", conf=tmp_path / "bad.conf", label="Bad's redis")
    with pytest.raises(HarnessError, match=r"^Bad's redis exited with code 1 at start-up; see .*redis\.log$"):
        redis.start()


def test_a_node_that_cannot_start_is_one_error_naming_its_log(tmp_path: Path) -> None:
    (tmp_path / "herd.toml").write_text("not toml [")
    node = NodeProcess("Solo", tmp_path / "herd.toml", free_port(), tmp_path / "Solo.log")
    with pytest.raises(HarnessError, match=r"^node Solo exited with code 2 at start-up; see .*Solo\.log$"):
        node.start()
    assert "herd.toml" in node.log()


def test_a_node_that_does_not_listen_in_time_times_out(tmp_path: Path) -> None:
    sleeper = ChildProcess("mute", ["sleep", "60"], tmp_path / "mute.log", port=free_port())
    expected = r"mute did not accept connections on port \d+ within 0.2 s; see .*mute\.log"
    with sleeper, pytest.raises(WaitTimeout, match=expected):
        sleeper.start(timeout=0.2)


# -- LocalHerd --------------------------------------------------------------------


def herd(tmp_path: Path, **options: object) -> LocalHerd:
    return LocalHerd(tmp_path / "herd", {"A": ["B"], "B": []}, secret="s", places='provider = "offline"',
                     stop_grace=0, **options)  # type: ignore[arg-type]


def all_ports(h: LocalHerd) -> list[int]:
    return [p for n in h.nodes.values() for p in (n.ports.client, n.ports.peer, n.ports.admin, n.redis.port)]


def test_local_herd_starts_links_and_stops_everything(tmp_path: Path) -> None:
    with herd(tmp_path) as h:
        assert len(set(all_ports(h))) == 8
        text = h.config.read_text()
        assert f"peer_port = {h['A'].ports.peer}" in text
        assert f'admin = "127.0.0.1:{h["B"].ports.admin}"' in text
        h.start()
        h.wait_links()
        assert h.neighbours("B") == {"A"}
        assert h["A"].redis.alive() and h["B"].alive()
    assert not any(port_open(p) for p in all_ports(h))
    assert not any(p.alive() for n in h.nodes.values() for p in (n, n.redis))


def test_local_herd_cleans_up_after_an_interrupt(tmp_path: Path) -> None:
    h = herd(tmp_path)
    with pytest.raises(KeyboardInterrupt), h:
        h.start()
        raise KeyboardInterrupt
    assert not any(p.alive() for n in h.nodes.values() for p in (n, n.redis))


def test_a_local_herd_that_fails_to_start_leaves_nothing_running(tmp_path: Path) -> None:
    h = herd(tmp_path, node_extra="port = 1\n")  # a key given twice: the config does not load
    with pytest.raises(HarnessError, match="node A exited with code 2 at start-up"):
        h.start()
    assert not any(p.alive() for n in h.nodes.values() for p in (n, n.redis))


def test_wait_links_names_a_link_still_down(tmp_path: Path) -> None:
    with herd(tmp_path) as h:
        h.start_redis()
        h["A"].start()
        h["B"].start(env={"HERD_SECRET": "another"})  # their handshakes fail
        with pytest.raises(WaitTimeout, match="link A-B"):
            h.wait_links(1.0)


def test_the_harness_imports_without_twisted() -> None:
    code = "import sys, herd.tools.harness; assert not [m for m in sys.modules if m.startswith('twisted')]"
    assert subprocess.run([PYTHON, "-c", code], capture_output=True).returncode == 0
