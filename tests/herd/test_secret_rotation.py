"""Rotating the herd's shared secret host by host without an outage
(docs/OPERATIONS.md, "Rotating the secret"): each node is restarted with the
new secret and the old one as `previous_secret_env`, then again with the new
one alone. Under load, nothing acknowledged is lost and each restarted node
is linked again within a reconnect."""

from __future__ import annotations

import socket
import threading
import time
from functools import partial
from pathlib import Path

from cluster import Herd
from harness import wait_until

from herd.wire import handshake

NEW = "the-new-secret"
OLD_SECRET_ENV = 'previous_secret_env = "HERD_SECRET_PREVIOUS"\n'


def test_a_listener_in_rotation_proves_either_secret_and_accepts_either() -> None:
    old, new = b"old", b"new"
    args = (b"D", b"L", b"n" * 32, b"m" * 32)
    by_old = handshake.mac(old, b"listener", *args)
    assert handshake.secret_behind((new, old), [handshake.mac(new, b"listener", *args), by_old],
                                   b"listener", *args) == new
    assert handshake.secret_behind((old,), [handshake.mac(new, b"listener", *args), by_old],
                                   b"listener", *args) == old
    assert handshake.secret_behind((new,), [by_old], b"listener", *args) is None
    assert handshake.secret_behind((new, old), [by_old[:-1] + b"0"], b"listener", *args) is None


class Load(threading.Thread):
    """IAMATs for fresh clients, round robin over the nodes, ~100 a second;
    remembers the acknowledged ones."""

    def __init__(self, ports: list[int]):
        super().__init__(daemon=True)
        self.ports = ports
        self.acked: list[str] = []
        self.running = True

    def run(self) -> None:
        n = 0
        while self.running:
            n += 1
            client = f"rot{n}"
            try:
                with socket.create_connection(("127.0.0.1", self.ports[n % len(self.ports)]), timeout=5) as s:
                    s.sendall(f"IAMAT {client} +1+1 1700000000.{n}\n".encode())
                    s.shutdown(socket.SHUT_WR)
                    if s.makefile("rb").readline().startswith(b"AT "):
                        self.acked.append(client)
            except OSError:
                pass  # that node is restarting: not acknowledged
            time.sleep(0.01)


def test_rotating_the_secret_under_load_loses_nothing(tmp_path: Path) -> None:
    herd = Herd(tmp_path, {"A": ["B"], "B": ["C"], "C": []}, extra_herd=OLD_SECRET_ENV).start()
    load = Load([herd[n].port for n in "ABC"])

    def relinked(peer: str, mark: dict[str, int]) -> bool:
        return herd[peer].log().count("link up") > mark[peer]

    def holds_acked(name: str) -> bool:
        return all(herd[name].record(c) for c in load.acked)

    try:
        herd.wait_links()
        load.start()
        old = herd.secret
        for env in ({"HERD_SECRET": NEW, "HERD_SECRET_PREVIOUS": old}, {"HERD_SECRET": NEW}):
            for name in "ABC":
                node = herd[name]
                node.stop()
                mark = {n: herd[n].log().count("link up") for n in herd.neighbours(name)}
                node.start(env=env)
                for peer in herd.neighbours(name):  # the neighbours linked again, promptly
                    wait_until(partial(relinked, peer, mark), timeout=5, what=f"{peer} relinked to {name}")
        time.sleep(0.5)
        load.running = False
        load.join(10)
        assert len(load.acked) > 100
        for name in "ABC":
            wait_until(partial(holds_acked, name), timeout=15, what=f"every acknowledged update on {name}")
        assert NEW not in herd["A"].log() and old not in herd["A"].log()
    finally:
        load.running = False
        herd.stop()
