"""The admin HTTP endpoint (docs/ADMIN-HTTP.md) of real node processes:
/healthz, /status, /metrics, unknown paths and methods, a taken port, "off"."""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from cluster import Herd, LocalNode, talk
from harness import REPO, child_env, free_port, port_open, wait_until

from herd.tools.harness import NodePorts, node_section
from herd.version import VERSION
from herd.wire.peer import VERSION as PEER_VERSION

PROTOCOL = PEER_VERSION.decode()


def http(port: int, path: str, method: str = "GET") -> tuple[int, str, bytes]:
    """(status, Content-Type, body) of one request to a node's admin endpoint."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


def running(herd: Herd) -> Herd:
    """``herd`` started, each node's admin endpoint listening (a moment after
    its client port)."""
    herd.start()

    def admin_listening(n: LocalNode) -> bool:
        return port_open(n.ports.admin)

    for node in herd.nodes.values():
        wait_until(partial(admin_listening, node), what=f"{node.name}'s admin endpoint")
    return herd


def status(port: int) -> dict[str, Any]:
    code, content_type, body = http(port, "/status")
    assert (code, content_type) == (200, "application/json")
    document: dict[str, Any] = json.loads(body)
    return document


def metric(text: str, name: str) -> float | None:
    """The value of the sample ``name`` (with its labels, as exposed), or None."""
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match[1]) if match else None


STATUS_TYPES = {
    "node": str, "version": str, "protocol": str, "clock": float, "started": float, "pid": int,
    "clients": int, "digest": str, "last_update": float, "requests": int, "rate": float,
    "redis": dict, "links": dict, "listen": dict, "flood": dict, "syncs": int,
}


def test_status_and_metrics_of_a_linked_herd(tmp_path: Path) -> None:
    """Three nodes in a triangle: each update reaches every node, some twice."""
    herd = running(Herd(tmp_path, {"A": ["B", "C"], "B": ["C"], "C": []}))
    try:
        herd.wait_links()
        admins = {name: herd[name].ports.admin for name in "ABC"}
        # Each node answers one SYNC per link as it comes up; those must be
        # over (empty) before the updates, or some travel as SYNC records.
        wait_until(lambda: [status(p)["syncs"] for p in admins.values()] == [2, 2, 2], what="first syncs")
        lines = [f"IAMAT s{i} +1+1 1700000000.{i}" for i in range(5)]
        assert talk(herd["A"].port, *lines).count(b"AT A ") == 5
        wait_until(lambda: {status(p)["clients"] for p in admins.values()} == {5}, what="5 clients")
        wait_until(lambda: len({status(p)["digest"] for p in admins.values()}) == 1, what="equal digests")
        docs = {name: status(port) for name, port in admins.items()}
        a = docs["A"]
        for key, kind in STATUS_TYPES.items():
            assert isinstance(a[key], kind), (key, a[key])
        assert (a["node"], a["version"], a["protocol"], a["pid"]) == ("A", VERSION, PROTOCOL, herd["A"].pid)
        assert abs(a["clock"] - time.time()) < 5 and a["started"] <= a["clock"]
        assert re.fullmatch("[0-9a-f]{16}", a["digest"]) and a["digest"] != "0" * 16
        assert a["last_update"] <= a["clock"] and a["requests"] == 5
        assert a["redis"] == {"state": "up", "address": f"127.0.0.1:{herd['A'].redis.port}"}
        assert set(a["links"]) == {"B", "C"}
        assert all(link["state"] == "up" and link["connections"] >= 1 for link in a["links"].values())
        ports = herd["A"].ports
        assert a["listen"] == {"client": f"127.0.0.1:{ports.client}", "peer": f"127.0.0.1:{ports.peer}",
                               "admin": f"127.0.0.1:{ports.admin}"}
        assert "s0" not in json.dumps(docs)  # no client data
        # Flood directions are disjoint: each update is stored once by each
        # other node ("in"); every copy sent ("out") arrives as "in" or "duplicate".
        flood = {name: docs[name]["flood"] for name in "ABC"}
        assert sum(f["in"] for f in flood.values()) == 2 * 5, flood
        wait_until(lambda: _flood_balanced(admins), what="every copy sent counted once where it arrived")
        assert [status(p)["syncs"] for p in admins.values()] == [2, 2, 2]  # no SYNC carried records

        code, content_type, body = http(admins["A"], "/metrics")
        assert code == 200 and content_type.startswith("text/plain; version=0.0.4")
        text = body.decode()
        assert metric(text, f'herd_build_info{{protocol="{PROTOCOL}",version="{VERSION}"}}') == 1
        assert metric(text, "herd_clients") == 5
        assert metric(text, "herd_client_connections") is not None
        assert metric(text, 'herd_peer_link_up{peer="B"}') == metric(text, 'herd_peer_link_up{peer="C"}') == 1
        assert metric(text, "herd_redis_up") == 1
        assert 0 <= metric(text, "herd_last_update_age_seconds") < 60  # type: ignore[operator]
        assert metric(text, 'herd_flood_messages_total{direction="out"}') >= 10  # type: ignore[operator]
        assert metric(text, 'herd_requests_total{command="IAMAT",outcome="ok"}') == 5
        assert metric(text, "process_resident_memory_bytes") and metric(text, "process_open_fds")
        assert metric(text, "process_cpu_seconds_total") is not None
    finally:
        herd.stop()


def _flood_balanced(admins: dict[str, int]) -> bool:
    flood = [status(port)["flood"] for port in admins.values()]
    return sum(f["out"] for f in flood) == sum(f["in"] + f["duplicate"] for f in flood)


def test_client_connections_and_links_down(tmp_path: Path) -> None:
    herd = Herd(tmp_path, {"A": ["B"], "B": []})
    herd.start(["A"])
    admin = herd["A"].ports.admin
    wait_until(lambda: port_open(admin), what="admin endpoint")
    try:
        assert status(admin)["links"] == {"B": {"state": "down", "connections": 0}}
        with socket.create_connection(("127.0.0.1", herd["A"].port)) as client:
            client.sendall(b"IAMAT c1 +1+1 1700000000\n")
            assert client.recv(100).startswith(b"AT A ")
            text = http(admin, "/metrics")[2].decode()
            assert metric(text, "herd_client_connections") == 1
            assert metric(text, 'herd_peer_link_up{peer="B"}') == 0
            assert status(admin)["client_connections"] == 1
    finally:
        herd.stop()


def test_healthz_and_status_follow_redis(tmp_path: Path) -> None:
    herd = running(Herd(tmp_path, {"Solo": []}))
    admin = herd["Solo"].ports.admin
    try:
        wait_until(lambda: http(admin, "/healthz")[0] == 200, what="healthy")
        code, content_type, body = http(admin, "/healthz")
        assert content_type == "application/json" and json.loads(body)["ok"] is True
        fresh = status(admin)
        assert (fresh["clients"], fresh["digest"], fresh["last_update"]) == (0, "0" * 16, None)
        assert metric(http(admin, "/metrics")[2].decode(), "herd_last_update_age_seconds") == math.inf
        herd["Solo"].redis.kill()
        wait_until(lambda: http(admin, "/healthz")[0] == 503, what="unhealthy without Redis")
        assert json.loads(http(admin, "/healthz")[2])["redis"] is False
        started = time.monotonic()
        down = status(admin)
        assert time.monotonic() - started < 2.5  # never waits a whole Redis timeout
        assert (down["clients"], down["digest"], down["redis"]["state"]) == (None, None, "down")
        text = http(admin, "/metrics")[2].decode()
        assert metric(text, "herd_redis_up") == 0 and metric(text, "herd_clients") is None
        herd["Solo"].redis.start()
        wait_until(lambda: http(admin, "/healthz")[0] == 200, timeout=15, what="healthy again")
        wait_until(lambda: status(admin)["redis"]["state"] == "up", what="status: Redis up again")
    finally:
        herd.stop()


def test_a_stuck_redis_does_not_hang_status(tmp_path: Path) -> None:
    """A Redis that accepts but never answers: /status answers within about
    a second, with nulls, and its clock is when the request came (it was
    taken after the wait: herd status showed a skew of half a second)."""
    herd = running(Herd(tmp_path, {"Solo": []}, extra_herd="redis_timeout = 5.0"))
    admin = herd["Solo"].ports.admin
    try:
        wait_until(lambda: status(admin)["redis"]["state"] == "up", what="Redis up")
        herd["Solo"].redis.pause()
        time.sleep(1.1)  # past the cached read
        started, asked = time.monotonic(), time.time()
        stuck = status(admin)
        assert time.monotonic() - started < 3.5  # not the Redis timeout (5 s)
        assert abs(stuck["clock"] - asked) < 0.7  # the wait for Redis took about a second ...
        assert 0.5 < stuck["held"] < 2.0  # ... and the document says so (herd status leaves it out)
        assert (stuck["clients"], stuck["digest"], stuck["redis"]["state"]) == (None, None, "down")
        assert http(admin, "/healthz")[0] == 503  # as /status says (it said 200 for 3 s more)
        herd["Solo"].redis.resume()
        wait_until(lambda: status(admin)["clients"] == 0, what="read again")
    finally:
        herd.stop()


def test_healthz_notices_a_stuck_redis_of_an_idle_node(tmp_path: Path) -> None:
    """No client, no read: the node's status write, once a second, goes
    unanswered, and /healthz says 503 within about 1.3 s (not a whole Redis
    timeout later); 200 again once Redis answers."""
    herd = running(Herd(tmp_path, {"Solo": []}, extra_herd="redis_timeout = 5.0"))
    admin = herd["Solo"].ports.admin
    try:
        wait_until(lambda: http(admin, "/healthz")[0] == 200, what="healthy")
        herd["Solo"].redis.pause()
        paused = time.monotonic()
        wait_until(lambda: http(admin, "/healthz")[0] == 503, timeout=10, what="unhealthy")
        assert time.monotonic() - paused < 4.5  # about 1.3 s (the status write is once a second), not 5
        herd["Solo"].redis.resume()
        wait_until(lambda: http(admin, "/healthz")[0] == 200, timeout=10, what="healthy again")
    finally:
        herd.stop()


def test_last_update_survives_a_restart(tmp_path: Path) -> None:
    herd = running(Herd(tmp_path, {"Solo": []}))
    node = herd["Solo"]
    try:
        talk(node.port, "IAMAT r1 +1+1 1700000000")
        first = status(node.ports.admin)["last_update"]
        assert first is not None and abs(first - time.time()) < 5
        wait_until(lambda: node.redis.hgetall("herd:status").get(b"last_update") is not None,
                   what="last update published")
        node.kill()
        node.start()
        wait_until(lambda: port_open(node.ports.admin), what="admin endpoint")
        wait_until(lambda: status(node.ports.admin)["last_update"] is not None, what="recalled")
        assert abs(status(node.ports.admin)["last_update"] - first) < 0.01
        text = http(node.ports.admin, "/metrics")[2].decode()
        assert metric(text, "herd_last_update_age_seconds") < math.inf  # type: ignore[operator]  # recalled
    finally:
        herd.stop()


def test_only_get_and_head_on_known_paths(tmp_path: Path) -> None:
    herd = running(Herd(tmp_path, {"Solo": []}))
    admin = herd["Solo"].ports.admin
    try:
        for path in ("/nope", "/status/", "/metrics/x", "/healthzz", "/static/", "/index.html"):
            assert http(admin, path)[0] == 404, path
        assert http(admin, "/")[:2] == (200, "text/html; charset=utf-8")  # the web page (test_web)
        assert http(admin, "/status?x=1")[0] == 200
        assert http(admin, "/status", method="POST")[0] == 405
        code, content_type, body = http(admin, "/status", method="HEAD")
        assert (code, content_type, body) == (200, "application/json", b"")
        assert http(admin, "/metrics", method="HEAD")[0] == 200
    finally:
        herd.stop()


def test_the_admin_endpoint_holds_a_bounded_number_of_connections(tmp_path: Path) -> None:
    """Found by a review: connections that sent a byte now and then (so no
    idle timeout ended them) took every file the node may open, and clients
    were refused. Past MAX_CONNECTIONS the admin endpoint closes new ones."""
    from herd.admin.site import MAX_CONNECTIONS, MAX_PER_ADDRESS

    herd = running(Herd(tmp_path, {"Solo": []}))
    node = herd["Solo"]
    held = []
    try:
        wait_until(lambda: http(node.ports.admin, "/healthz")[0] == 200, what="healthy")
        # From as many loopback addresses as it takes (at most MAX_PER_ADDRESS from one).
        for n in range(MAX_CONNECTIONS):
            sock = socket.socket()
            sock.bind((f"127.0.0.{2 + n // MAX_PER_ADDRESS}", 0))
            sock.settimeout(10)
            sock.connect(("127.0.0.1", node.ports.admin))
            sock.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # never ends
            held.append(sock)
        assert not port_takes_one_more(node.ports.admin)  # (accepted in order: after the held ones)
        wait_until(lambda: f"admin endpoint: {MAX_CONNECTIONS} connections open, the most it holds; "
                           "refusing more" in node.log(), what="the refusal said")
        assert talk(node.port, "IAMAT still.served +1+1 1700000000").startswith(b"AT Solo ")
        for sock in held:
            sock.close()
        wait_until(lambda: http(node.ports.admin, "/healthz")[0] == 200, what="the admin endpoint again")
        held = [socket.create_connection(("127.0.0.1", node.ports.admin), timeout=10)
                for _ in range(MAX_PER_ADDRESS)]  # from 127.0.0.1: all it takes from one address
        assert not port_takes_one_more(node.ports.admin)
        wait_until(lambda: "connections open from 127.0.0.1, the most from one address" in node.log(),
                   what="the refusal said")
    finally:
        for sock in held:
            sock.close()
        herd.stop()


def port_takes_one_more(port: int) -> bool:
    """Whether one more connection to ``port`` is kept (not closed at once)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.settimeout(0.5)
        try:
            return sock.recv(1) != b""
        except TimeoutError:
            return True


def serve_once(herd: Herd, name: str, notify: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(herd[name].argv, cwd=REPO, capture_output=True, text=True, timeout=30,
                          env=child_env(HERD_SECRET=herd.secret, GOOGLE_PLACES_KEY="k", NOTIFY_SOCKET=notify))


@pytest.mark.parametrize("which, what",
                         [("admin", "the admin endpoint"), ("client", "clients"), ("peer", "peers")])
def test_a_taken_port_stops_the_node_with_one_line(tmp_path: Path, which: str, what: str) -> None:
    herd = Herd(tmp_path, {"Solo": []})
    port = getattr(herd["Solo"].ports, which)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(0.2)
    try:
        herd["Solo"].redis.start()
        with socket.create_server(("127.0.0.1", port)):
            result = serve_once(herd, "Solo", str(tmp_path / "notify.sock"))
        assert result.returncode == 1
        reason = "Address already in use"
        why = f"cannot listen for {what} on 127.0.0.1:{port}: {reason}"
        assert result.stderr == f"herd: Solo: {why}\n"
        assert "Traceback" not in result.stdout + result.stderr
        # The event log, written before the exit: the start line, then the error with its level.
        lines = result.stdout.splitlines()
        assert f"herd {VERSION} node Solo starting" in lines[0]
        assert lines[-1].endswith(f"[Solo] error: {why}; exiting")
        with pytest.raises(TimeoutError):
            notify.recv(4096)  # no READY=1, nothing at all
    finally:
        notify.close()
        herd.stop()


def test_a_taken_port_is_an_error_event_in_the_json_event_log(tmp_path: Path) -> None:
    herd = Herd(tmp_path, {"Solo": []})
    port = herd["Solo"].ports.peer
    try:
        herd["Solo"].redis.start()
        with socket.create_server(("127.0.0.1", port)):
            result = subprocess.run([*herd["Solo"].argv, "--log-format", "json"], cwd=REPO,
                                    capture_output=True, text=True, timeout=30,
                                    env=child_env(HERD_SECRET=herd.secret, GOOGLE_PLACES_KEY="k"))
        assert result.returncode == 1
        events = [json.loads(line) for line in result.stdout.splitlines()]
        assert events[0]["level"] == "info" and VERSION in events[0]["message"]
        assert events[-1]["level"] == "error"
        assert events[-1]["why"] == f"cannot listen for peers on 127.0.0.1:{port}: Address already in use"
        said = json.loads(result.stderr)  # the one line on stderr, as JSON too (it was missing)
        assert (said["level"], said["node"]) == ("error", "Solo")
        assert "cannot listen for peers" in said["message"]
    finally:
        herd.stop()


def _client_port_with_free_default_admin() -> int:
    """A free client port whose default admin port (+ 20000) is free too."""
    while True:
        port = free_port()
        if port + 20000 <= 65535 and not port_open(port + 20000):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 20000))
                except OSError:
                    continue
            return port


@pytest.mark.parametrize("admin_line, listens", [("", True), ('admin = "off"\n', False)])
def test_admin_on_by_default_and_off(tmp_path: Path, admin_line: str, listens: bool) -> None:
    herd = Herd(tmp_path, {"Solo": []})
    node = herd["Solo"]
    port = _client_port_with_free_default_admin()
    ports = NodePorts(port, node.ports.peer, node.ports.admin)
    section = node_section("Solo", "127.0.0.1", ports, node.redis.url, [])
    section = re.sub(r'admin = "[^"]*"\n', admin_line, section)
    text = herd.config.read_text()
    herd.config.write_text(text[:text.index("[nodes.Solo]")] + section)
    node.port = port
    try:
        herd.start()
        if listens:
            wait_until(lambda: port_open(port + 20000), what="default admin endpoint")
            wait_until(lambda: http(port + 20000, "/healthz")[0] == 200, what="healthy")
        else:
            time.sleep(0.3)  # it would listen at start, with the client port
            assert not port_open(port + 20000)
        assert not port_open(node.ports.admin)
    finally:
        herd.stop()


def _free_port_from(low: int) -> int:
    for port in range(low, 65536):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port from {low}")


def test_a_default_admin_port_above_65535_leaves_the_node_serving_without_one(tmp_path: Path) -> None:
    herd = Herd(tmp_path, {"Solo": []})
    node = herd["Solo"]
    port = _free_port_from(50000)  # + 20000: above 65535; the peer port stays set (SPEC 5 requires it)
    section = node_section("Solo", "127.0.0.1", NodePorts(port, node.ports.peer, node.ports.admin),
                           node.redis.url, [])
    section = re.sub(r'admin = "[^"]*"\n', "", section)
    text = herd.config.read_text()
    herd.config.write_text(text[:text.index("[nodes.Solo]")] + section)
    node.port = port
    try:
        herd.start()
        assert talk(port, "IAMAT a +1+1 1.5").startswith(b"AT Solo ")
        note = f"warning: no admin endpoint: its default address, port + 20000 = {port + 20000}"
        wait_until(lambda: note in node.log(), what="the node's warning")
    finally:
        herd.stop()


def test_start_up_does_not_import_prometheus_client() -> None:
    """prometheus_client is imported at the first scrape (SPEC: answer within 0.5 s)."""
    code = "import sys, herd.service, herd.admin; assert 'prometheus_client' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=30).returncode == 0
