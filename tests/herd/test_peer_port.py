"""SPEC 2, peer port: links run on peer_port, so a node can be stopped the
way a public grading script does it (`lsof -ti:PORT | xargs kill`: every
process with a socket on the client port) without killing its neighbours,
and clients at the connection limit cannot keep peers out."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from cluster import Herd, talk
from harness import wait_until


def pids_with_a_socket_on(port: int) -> set[int]:
    """Processes holding a TCP socket whose local or remote port is ``port``
    (what ``lsof -ti:PORT`` lists), read from /proc."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                local, remote, inode = fields[1], fields[2], fields[9]
                if int(local.rsplit(":", 1)[1], 16) == port or int(remote.rsplit(":", 1)[1], 16) == port:
                    inodes.add(inode)
    pids = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            links = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds}
        except OSError:
            continue
        if any(link == f"socket:[{inode}]" for inode in inodes for link in links):
            pids.add(int(pid))
    return pids


def test_killing_every_process_on_a_client_port_stops_only_that_node(tmp_path: Path) -> None:
    herd = Herd(tmp_path, {"A": ["B"], "B": ["C"], "C": []}).start()
    try:
        herd.wait_links()
        assert talk(herd["B"].port, "IAMAT before +1+1 1700000000").startswith(b"AT B ")
        victims = pids_with_a_socket_on(herd["B"].port)
        assert victims == {herd["B"].pid}
        for pid in victims:
            os.kill(pid, signal.SIGTERM)
        herd["B"].wait(timeout=15)
        for name in ("A", "C"):
            assert herd[name].alive()
            assert talk(herd[name].port, f"IAMAT after.{name} +1+1 1700000000").startswith(
                f"AT {name} ".encode())
    finally:
        herd.stop()


def test_clients_at_the_connection_limit_do_not_keep_peers_out(tmp_path: Path) -> None:
    """The client port's max_connections counts clients only: with it full, a
    neighbour still links on the peer port and updates still flood."""
    import socket

    herd = Herd(tmp_path, {"A": ["B"], "B": []}, extra_herd="max_connections = 3\n")
    herd.start(["A"])
    wait_until(lambda: "connection closed" in herd["A"].access_log(), what="the readiness probe gone")
    hogs = [socket.create_connection(("127.0.0.1", herd["A"].port)) for _ in range(3)]
    try:
        wait_until(lambda: herd["A"].access_log().count("connection opened") >= 4, what="the 3 hogs in")
        with socket.create_connection(("127.0.0.1", herd["A"].port), timeout=5) as fourth:
            assert fourth.recv(100) == b""  # the client port is full: refused
        herd.start(["B"])
        herd.wait_links()
        assert talk(herd["B"].port, "IAMAT via.b +1+1 1700000000").startswith(b"AT B ")
        wait_until(lambda: herd["A"].record("via.b") != {}, what="the update on A")
    finally:
        for hog in hogs:
            hog.close()
        herd.stop()
