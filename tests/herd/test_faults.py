"""Faults with real processes: kill -9 of a node or of its Redis loses nothing
acknowledged; Redis outages are answered ``? <line>`` in bounded time and
healed by the node itself; a peer with the wrong secret never gets in;
SIGTERM stops a node cleanly; a node answers within 0.5 s of starting."""

from __future__ import annotations

import signal
import socket
import time
from functools import partial
from pathlib import Path

import pytest
from cluster import Herd, talk
from harness import port_open, wait_until

from herd.tools.harness import LocalNode, NodeProcess

LINE = {"A": ["B"], "B": ["C"], "C": []}


@pytest.fixture
def line3(tmp_path: Path):  # type: ignore[no-untyped-def]
    h = Herd(tmp_path, LINE).start()
    try:
        h.wait_links()
        yield h
    finally:
        h.stop()


def acknowledge(node: LocalNode, prefix: str, count: int) -> list[bytes]:
    lines = [f"IAMAT {prefix}{i} +1.5-2.5 1700000000.{i:09d}" for i in range(count)]
    replies = talk(node.port, *lines).splitlines()
    assert len(replies) == count and all(r.startswith(b"AT ") for r in replies)
    return replies


def test_kill_9_node_then_restart_keeps_every_acknowledged_client(line3: Herd) -> None:
    acked = acknowledge(line3["A"], "durable", 200)
    line3["A"].kill()
    line3["A"].start()
    for i, at_line in enumerate(acked):
        assert line3["A"].record(f"durable{i}")[b"at"] == at_line
    reply = talk(line3["A"].port, "WHATSAT durable7 5 2")
    assert reply.startswith(acked[7] + b"\n{")


def test_kill_9_redis_in_strict_mode_loses_no_acknowledged_update(line3: Herd) -> None:
    acked = acknowledge(line3["B"], "strict", 300)
    line3["B"].redis.kill()
    line3["B"].redis.start()
    for i, at_line in enumerate(acked):
        assert line3["B"].record(f"strict{i}")[b"at"] == at_line


def test_redis_outage_is_answered_in_bounded_time_and_heals(line3: Herd) -> None:
    node = line3["C"]
    node.redis.kill()
    started = time.monotonic()
    line = "IAMAT outage +1+1 1700000000"
    assert talk(node.port, line, timeout=15) == f"? {line}\n".encode()
    assert time.monotonic() - started < 6
    node.redis.start()
    returned = time.monotonic()
    wait_until(lambda: talk(node.port, line).startswith(b"AT C "), timeout=10, what="recovery")
    assert time.monotonic() - returned < 10
    assert node.record("outage")[b"time"] == b"1700000000"
    wait_until(lambda: "cannot serve IAMAT outage" in node.log(), what="the refusal logged with its cause")
    serves = f"Redis at 127.0.0.1:{node.redis.port} serves"  # at start, and once it was back
    wait_until(lambda: node.log().count(serves) >= 2, what="Redis serving again logged")
    assert f"lost the connection to Redis at 127.0.0.1:{node.redis.port}; reconnecting" in node.log()
    assert "object at 0x" not in node.log()  # retries name the Redis, not a Python object


def test_refusals_in_an_outage_are_logged_at_most_ten_a_second_plus_a_sum(line3: Herd) -> None:
    node = line3["A"]
    node.redis.kill()
    try:
        lines = [f"IAMAT storm{i} +1+1 1700000000" for i in range(300)]
        replies = talk(node.port, *lines, timeout=30)
        assert replies == b"".join(f"? {line}\n".encode() for line in lines)
        wait_until(lambda: "more request(s) in the last second" in node.log(),
                   what="the sum of the refusals left out")
        log = node.log()
        assert log.count("error: cannot serve IAMAT storm") <= 20  # at most 10 a second
        # The access log still has every one.
        wait_until(lambda: node.access_log().count("sent ? IAMAT storm") == 300, what="the access log")
        assert "IAMAT storm" not in log.replace("cannot serve IAMAT storm", "")  # only the summarised errors
    finally:
        node.redis.start()


def test_updates_flood_again_after_a_peer_restarts(line3: Herd) -> None:
    line3["B"].kill()
    line3["B"].start()
    wait_until(lambda: line3["A"].log().count("peer B link up") >= 2, what="A relinked to B")
    wait_until(lambda: line3["C"].log().count("peer B link up") >= 2, what="C relinked to B")
    at_line = talk(line3["A"].port, "IAMAT after.restart +1+1 1700000000").rstrip(b"\n")
    wait_until(lambda: line3["C"].record("after.restart").get(b"at") == at_line, what="flood to C")


def test_sigterm_stops_a_node_cleanly(line3: Herd) -> None:
    node = line3["A"]
    with socket.create_connection(("127.0.0.1", node.port)) as idle:
        code = node.stop()
        assert code == 0
        assert idle.recv(100) == b""  # the node closed the idle client
    assert not port_open(node.port)
    assert "stopped" in node.log()
    wait_until(lambda: "peer A connection dropped; link down" in line3["B"].log(), what="B saw A go")


def test_node_answers_within_half_a_second_of_starting(tmp_path: Path) -> None:
    herd = Herd(tmp_path, {"Solo": []})
    try:
        herd["Solo"].redis.start()
        node = herd["Solo"]
        started = time.monotonic()
        node.start(wait=False)
        reply = b""
        while time.monotonic() - started < 10:
            try:
                reply = talk(node.port, "IAMAT fast +1+1 1700000000")
                break
            except OSError:
                time.sleep(0.005)
        elapsed = time.monotonic() - started
        assert reply.startswith(b"AT Solo ")
        # Not a benchmark: a loose bound that catches a node doing slow work
        # before it listens. docs/BENCHMARKS.md has the measured figure.
        assert elapsed < 4.0
    finally:
        herd.stop()


def says_the_secrets_differ(node: LocalNode) -> bool:
    return any("handshake failed at 'HERD-CHALLENGE " in line and line.endswith(
        "; the peer's challenge proves another secret than this node's (the two nodes' secrets differ)")
        for line in node.log().splitlines())


def test_peer_with_the_wrong_secret_never_gets_in(tmp_path: Path) -> None:
    herd = Herd(tmp_path, {"Good": ["Bad"], "Bad": []})
    try:
        herd.start(["Good"])
        herd["Bad"].redis.start()
        herd["Bad"].start(env={"HERD_SECRET": "not-the-secret"})
        # Each side dials the other and finds the other's proof wrong.
        # (found by a review: neither log said the secret was the cause)
        for name in ("Bad", "Good"):
            wait_until(partial(says_the_secrets_differ, herd[name]), what=f"{name} to refuse the other")
        abandoned = "handshake abandoned after this node's challenge (claimed to be Bad;"
        wait_until(lambda: abandoned in herd["Good"].log(), what="Good logged Bad's abandoned handshake")
        talk(herd["Bad"].port, "IAMAT from.bad +1+1 1700000000")
        talk(herd["Good"].port, "IAMAT from.good +1+1 1700000000")
        time.sleep(0.3)
        assert herd["Good"].record("from.bad") == {}
        assert herd["Bad"].record("from.good") == {}
        assert "link up" not in herd["Good"].log() + herd["Bad"].log()
        assert "retrying in" in herd["Good"].log()  # back-off, not a tight loop
        assert "Unhandled Error" not in herd["Good"].log() + herd["Bad"].log()
        assert (
            "not-the-secret" not in herd["Bad"].log() and "integration-test-secret" not in herd["Good"].log()
        )
    finally:
        herd.stop()


def test_sigterm_lets_in_flight_replies_finish(tmp_path: Path) -> None:
    # A Redis timeout longer than the test's steps: the reply waits for Redis only.
    herd = Herd(tmp_path, {"Solo": []}, extra_herd="redis_timeout = 20").start()
    try:
        node = herd["Solo"]
        talk(node.port, "IAMAT warm +1+1 1700000000")  # Redis connected, scripts loaded
        node.redis.pause()
        with socket.create_connection(("127.0.0.1", node.port), timeout=10) as client:
            client.sendall(b"IAMAT inflight +1+1 1700000001\n")
            wait_until(lambda: "recv IAMAT inflight" in node.access_log(), what="request received")
            node.send_signal(signal.SIGTERM)
            wait_until(lambda: "finishing in-flight replies" in node.log(), what="shutdown began")
            node.send_signal(signal.SIGINT)  # an impatient Ctrl-C
            wait_until(lambda: "SIGINT again: already stopping" in node.log(), what="the second signal noted")
            node.redis.resume()
            reply = client.recv(4096)
            assert reply.startswith(b"AT Solo ") and reply.endswith(b" inflight +1+1 1700000001\n")
            assert client.recv(10) == b""  # then the node closed the connection
        assert node.wait(timeout=15) == 0  # it stops by itself (signalling again could kill it late)
        assert " critical: " not in node.log() and " error: " not in node.log()
    finally:
        herd.stop()


@pytest.mark.parametrize("how", ["flag", "systemd"])
def test_json_logs_are_one_object_per_line(tmp_path: Path, how: str) -> None:
    """JSON with --log-format json; text without it, even in a systemd
    service's environment (SPEC: text by default; the unit asks for JSON)."""
    import json

    herd = Herd(tmp_path, {"Solo": []})
    herd["Solo"].redis.start()
    systemd = {"INVOCATION_ID": "0123456789abcdef", "JOURNAL_STREAM": "8:1234"} if how == "systemd" else {}
    node = NodeProcess("Solo", herd.config, herd["Solo"].port, tmp_path / "json.log",
                       args=["--log-format", "json"] if how == "flag" else [],
                       env={"HERD_SECRET": herd.secret, "GOOGLE_PLACES_KEY": "k", **systemd})
    try:
        node.start()
        talk(node.port, "IAMAT json.client +1+1 1700000000")
        assert node.stop(timeout=15) == 0
        if how == "systemd":  # ($JOURNAL_STREAM names another stream: no <N> prefixes either)
            lines = node.log().splitlines()
            assert lines and not any(line.startswith(("{", "<")) for line in lines), lines[:3]
            assert any(" [Solo] info: " in line and "listening on" in line for line in lines)
            return
        records = [json.loads(line) for line in node.log().splitlines()]
        assert all({"time", "node", "level", "message"} <= set(r) for r in records)
        assert any(r["message"].startswith("node Solo listening") and r["port"] == node.port
                   for r in records)
        assert not any("json.client" in r["message"] for r in records)  # that is the access log's
    finally:
        node.kill()
        herd.stop()
