"""Connection limits with a real node: many idle connections do not starve
others, idle clients are closed, max_connections refuses the excess, and the
outstanding-request cap applies back-pressure without losing requests."""

from __future__ import annotations

import resource
import socket
import time
from pathlib import Path

from cluster import Herd, talk
from harness import wait_until


def test_a_thousand_idle_connections_do_not_starve_others(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 4096), hard), hard))
    herd = Herd(tmp_path, {"Solo": []}).start()
    idle = []
    try:
        for _ in range(1000):
            idle.append(socket.create_connection(("127.0.0.1", herd["Solo"].port)))
        wait_until(lambda: herd["Solo"].access_log().count("connection opened") >= 1000,
                   what="1000 connections")
        started = time.monotonic()
        reply = talk(herd["Solo"].port, "IAMAT busy.client +1+1 1700000000")
        assert reply.startswith(b"AT Solo ")
        assert time.monotonic() - started < 2.0  # loose: a starved node would take far longer
    finally:
        for sock in idle:
            sock.close()
        herd.stop()


def test_idle_client_is_closed_and_excess_connections_refused(tmp_path: Path) -> None:
    herd = Herd(tmp_path, {"Solo": []}, extra_herd="idle_timeout = 0.5\nmax_connections = 3").start()
    try:
        port = herd["Solo"].port
        with socket.create_connection(("127.0.0.1", port), timeout=5) as quiet:
            started = time.monotonic()
            assert quiet.recv(10) == b""  # closed by the node
            assert 0.4 < time.monotonic() - started < 4
        wait_until(lambda: "idle for 0.5s; closing" in herd["Solo"].access_log(), what="idle close logged")
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
        wait_until(lambda: herd["Solo"].access_log().count("connection opened") >= 4, what="3 more open")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as excess:
            assert excess.recv(10) == b""
        wait_until(
            lambda: "refused: 3 connections open (max_connections)" in herd["Solo"].log(),
            what="refusal logged",
        )
        for sock in held:
            sock.close()
    finally:
        herd.stop()


def test_outstanding_cap_pauses_reading_but_answers_everything(tmp_path: Path) -> None:
    herd = Herd(tmp_path, {"Solo": []}, extra_herd="max_outstanding = 2").start()
    try:
        lines = [f"IAMAT cap{i} +1+1 1700000000.{i:09d}" for i in range(200)]
        replies = talk(herd["Solo"].port, *lines).splitlines()
        assert len(replies) == 200
        assert [r.split()[3] for r in replies] == [f"cap{i}".encode() for i in range(200)]
    finally:
        herd.stop()
