"""Cut-through flooding: a node forwards an update it knows to be newer before
its own Redis has stored it, and the herd still ends up agreeing when that
store is lost (Redis connection dropped, or the node killed before storing)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import Herd, RedisProxy, talk
from harness import Resp, wait_until

from herd.node import STORE_AGAIN_AFTER


def start_pair(tmp_path: Path, mode: str | None, loading: float = 0.0,
               extra_herd: str = "") -> tuple[Herd, RedisProxy | None]:
    herd = Herd(tmp_path, {"A": ["B"], "B": []}, extra_herd=extra_herd)
    proxy = None
    if mode is not None:
        proxy = RedisProxy(herd["A"].redis.port, mode, loading)
        herd.config.write_text(herd.config.read_text().replace(
            herd["A"].redis.url, f"redis://127.0.0.1:{proxy.port}/0"))
    herd.start()
    herd.wait_links()
    # The links' first syncs are over: an update made during one goes in the
    # SYNC answer once stored, not cut-through (a race these tests lost now and then).
    wait_until(lambda: "sync to B:" in herd["A"].log() and "sync to A:" in herd["B"].log(),
               what="the first syncs between A and B")
    # Both nodes have read their client times and run a chain: updates take the fast path.
    assert talk(herd["A"].port, "IAMAT warm +1+1 1700000000.5").startswith(b"AT A ")
    wait_until(lambda: herd["B"].record("warm") == herd["A"].record("warm"), what="warm-up flood")
    return herd, proxy


@pytest.fixture
def direct(tmp_path: Path) -> Iterator[Herd]:
    herd, _ = start_pair(tmp_path, None)
    try:
        yield herd
    finally:
        herd.stop()


def agreed(herd: Herd, client: str, timeout: float = 15.0) -> None:
    def same() -> bool:
        held = herd["A"].record(client)
        return held != {} and herd["B"].record(client) == held

    wait_until(same, timeout, what=f"A and B to hold the same record of {client}")


@pytest.mark.timeout(90)
def test_a_peer_stores_an_update_first_and_later_ones_wait_while_a_write_stalls(tmp_path: Path) -> None:
    # A's stores wait until the UNPAUSE below (its Redis timeout is longer than that).
    herd, _ = start_pair(tmp_path, None, extra_herd="redis_timeout = 30")
    try:
        herd["A"].redis.call("CLIENT", "PAUSE", "20000", "WRITE")
        first: list[bytes] = []
        sender = threading.Thread(target=lambda: first.append(
            talk(herd["A"].port, "IAMAT first +2+2 1700000001.5", timeout=30)))
        sender.start()
        wait_until(lambda: herd["B"].record("first") != {}, timeout=10, what="B to store the forwarded one")
        assert sender.is_alive(), "A answered before its Redis could store the update"
        assert herd["A"].record("first") == {}
        time.sleep(0.3)  # A's store of `first` has now waited longer than STALLED (0.25 s)
        second: list[bytes] = []
        later = threading.Thread(target=lambda: second.append(
            talk(herd["A"].port, "IAMAT second +3+3 1700000002.5", timeout=30)))
        later.start()
        wait_until(lambda: "recv IAMAT second" in herd["A"].access_log(), what="A to read the second update")
        assert later.is_alive()
        herd["A"].redis.call("CLIENT", "UNPAUSE")
        later.join(30)
        sender.join(30)
        assert second and second[0].startswith(b"AT A ")  # answered once the pause ended
        assert first and first[0].startswith(b"AT A ")
        agreed(herd, "first")
        agreed(herd, "second")  # sent as U, once A had stored it
        wait_until(lambda: " sent U " in herd["A"].access_log(), what="A's access log")
        forwarded = [line for line in herd["A"].access_log().splitlines() if " sent F " in line]
        assert any(" first " in line for line in forwarded)
        assert not any(" second " in line for line in forwarded)
    finally:
        herd.stop()


@pytest.mark.timeout(60)
def test_a_redis_that_refuses_writes_stops_forwarding_after_the_first_refusal(direct: Herd) -> None:
    herd = direct
    herd["A"].redis.call("CONFIG", "SET", "maxmemory", "1")  # every write now fails with OOM
    for n in range(3):
        line = f"IAMAT full{n} +2+2 170000000{n}.5"
        assert talk(herd["A"].port, line, timeout=15) == f"? {line}\n".encode()
    time.sleep(0.5)  # a forwarded update would have reached B by now
    assert herd["B"].record("full1") == {} and herd["B"].record("full2") == {}
    wait_until(lambda: "Redis does not serve yet (OOM" in herd["A"].log(), what="A's log")
    herd["A"].redis.call("CONFIG", "SET", "maxmemory", "0")
    # Only the first was forwarded (nothing had failed yet); A stores it again.
    agreed(herd, "full0")


@pytest.mark.timeout(60)
def test_nothing_is_forwarded_while_the_nodes_redis_is_down(direct: Herd) -> None:
    herd = direct
    herd["A"].redis.kill()
    line = "IAMAT unserved +2+2 1700000001.5"
    assert talk(herd["A"].port, line, timeout=15) == f"? {line}\n".encode()  # after A's 3 s Redis timeout
    # A forwarded update would have reached B within those seconds.
    assert herd["B"].record("unserved") == {}
    herd["A"].redis.start()
    served = "IAMAT served +3+3 1700000002.5"
    wait_until(lambda: talk(herd["A"].port, served, timeout=15).startswith(b"AT A "), what="A to serve again")
    agreed(herd, "served")
    assert herd["B"].record("unserved") == {} and herd["A"].record("unserved") == {}


# With loading=1.5 the proxy answers LOADING for 1.5 s after dropping the write,
# as a restarted Redis replaying its AOF does. Found by `herd chaos --seed 11`:
# nothing tried again once it served.
@pytest.mark.parametrize(("loading", "logged"), [(0.0, "storing 1 forwarded update(s) again"),
                                                 (1.5, "Redis does not serve yet (LOADING")])
@pytest.mark.timeout(60)
def test_a_forwarded_update_whose_store_failed_is_stored_once_redis_serves(
        tmp_path: Path, loading: float, logged: str) -> None:
    herd, proxy = start_pair(tmp_path, "drop", loading)
    assert proxy is not None
    try:
        proxy.marker = b"ghost"
        line = "IAMAT ghost +2+2 1700000001.5"
        assert talk(herd["A"].port, line, timeout=15) == f"? {line}\n".encode()  # not acknowledged
        assert proxy.fired.is_set()
        # B got it forwarded; A stores it again once its Redis serves.
        agreed(herd, "ghost")
        assert (proxy.loading_replies > 0) == (loading > 0)
        wait_until(lambda: logged in herd["A"].log(), what="A's log")
    finally:
        herd.stop()
        proxy.close()


@pytest.mark.timeout(60)
def test_a_refused_update_that_went_to_no_peer_is_not_stored_later(tmp_path: Path) -> None:
    """Found by a review: a node with no peer stored, seconds later, the
    updates whose store failed and which it had answered '? <line>'; only what
    went to peers is stored again (the test above)."""
    herd = Herd(tmp_path, {"Solo": []})
    proxy = RedisProxy(herd["Solo"].redis.port, "drop")
    herd.config.write_text(herd.config.read_text().replace(
        herd["Solo"].redis.url, f"redis://127.0.0.1:{proxy.port}/0"))
    herd.start()
    try:
        node = herd["Solo"]
        assert talk(node.port, "IAMAT warm +1+1 1700000000.5").startswith(b"AT Solo ")  # the fast path
        proxy.marker = b"ghost"
        line = "IAMAT ghost +2+2 1700000001.5"
        assert talk(node.port, line, timeout=15) == f"? {line}\n".encode()
        assert proxy.fired.is_set()
        served = "IAMAT after +3+3 1700000002.5"
        wait_until(lambda: talk(node.port, served, timeout=15).startswith(b"AT Solo "), what="Solo serves")
        time.sleep(STORE_AGAIN_AFTER + 0.5)  # when it would have stored it again
        assert node.record("ghost") == {} and "again" not in node.log()
    finally:
        herd.stop()
        proxy.close()


@pytest.mark.timeout(90)
def test_a_node_killed_before_storing_what_it_forwarded_gets_it_back(tmp_path: Path) -> None:
    # A's Redis timeout outlasts the held store: A never stores it itself, even through a slow test.
    herd, proxy = start_pair(tmp_path, "hold", extra_herd="redis_timeout = 60")
    assert proxy is not None
    try:
        proxy.marker = b"ghost"
        client = socket.create_connection(("127.0.0.1", herd["A"].port))
        client.sendall(b"IAMAT ghost +2+2 1700000001.5\n")  # never answered
        wait_until(proxy.fired.is_set, what="A's store to be held")
        wait_until(lambda: herd["B"].record("ghost") != {}, what="B to store the forwarded update")
        herd["A"].kill()
        client.close()
        assert herd["A"].record("ghost") == {}
        # B logged ghost as coming from A; the restarted A asks with SYNC ... ALL.
        herd["A"].start()
        herd.wait_links()
        agreed(herd, "ghost")
    finally:
        herd.stop()
        proxy.close()


@pytest.mark.timeout(60)
def test_a_node_on_database_1_reconnects_after_redis_has_loaded_its_data(tmp_path: Path) -> None:
    # txredisapi stopped reconnecting for good when SELECT got LOADING.
    herd = Herd(tmp_path, {"A": ["B"], "B": []})
    proxy = RedisProxy(herd["A"].redis.port, "drop", loading=1.5)
    herd.config.write_text(herd.config.read_text().replace(
        herd["A"].redis.url, f"redis://127.0.0.1:{proxy.port}/1"))
    herd.start()
    try:
        herd.wait_links()
        assert talk(herd["A"].port, "IAMAT warm +1+1 1700000000.5").startswith(b"AT A ")
        proxy.marker = b"ghost"
        line = "IAMAT ghost +2+2 1700000001.5"
        assert talk(herd["A"].port, line, timeout=15) == f"? {line}\n".encode()
        wait_until(lambda: talk(herd["A"].port, "IAMAT after +3+3 1700000002.5").startswith(b"AT A "),
                   timeout=15, what="A to serve again")
        assert proxy.loading_replies > 0
        with Resp(herd["A"].redis.port) as redis:
            redis.call("SELECT", "1")
            assert redis.call("HGET", "herd:client:after", "at") is not None
    finally:
        herd.stop()
        proxy.close()
