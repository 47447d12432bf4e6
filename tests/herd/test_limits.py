"""Connection limits with a real node: many idle connections do not starve
others, idle clients are closed, max_connections refuses the excess, and the
outstanding-request cap applies back-pressure without losing requests."""

from __future__ import annotations

import resource
import signal
import socket
import struct
import threading
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


def test_idle_client_is_closed(tmp_path: Path) -> None:
    herd = Herd(tmp_path, {"Solo": []}, extra_herd="idle_timeout = 0.5").start()
    try:
        with socket.create_connection(("127.0.0.1", herd["Solo"].port), timeout=5) as quiet:
            started = time.monotonic()
            assert quiet.recv(10) == b""  # closed by the node
            assert 0.4 < time.monotonic() - started < 4
        wait_until(lambda: "idle for 0.5s; closing" in herd["Solo"].access_log(), what="idle close logged")
    finally:
        herd.stop()


def test_excess_connections_are_refused(tmp_path: Path) -> None:
    # The default idle timeout: held connections stay open however slow the machine.
    herd = Herd(tmp_path, {"Solo": []}, extra_herd="max_connections = 3").start()
    try:
        port = herd["Solo"].port
        wait_until(lambda: "connection closed" in herd["Solo"].access_log(), what="the readiness probe gone")
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


def test_a_client_that_does_not_read_its_replies_is_not_read_either(tmp_path: Path) -> None:
    """Found by a review: replies a client left unread piled up in the node
    (IAMATs for 25 s: 52 -> 129 MB; WHATSATs: 3.6 GB). Now the node stops
    reading from it once its replies fill the transport's buffer, and reads
    on as the client reads."""
    herd = Herd(tmp_path, {"Solo": []}).start()
    try:
        sock, chunk, lines, pending = _send_until_the_node_stops_reading(herd["Solo"].port)
        assert herd["Solo"].access_log().count(" recv IAMAT ") < lines  # the rest waits in buffers
        sock.setblocking(True)
        sock.settimeout(30)
        sock.shutdown(socket.SHUT_WR)  # a line cut short is a line too (answered '? <line>')
        cut = bool(pending) and not chunk[:len(chunk) - len(pending)].endswith(b"\n")
        replies = b""
        while data := sock.recv(1 << 20):  # the node reads on as we read
            replies += data
        assert replies.count(b"\n") == lines + cut  # every request answered
        sock.close()
    finally:
        herd.stop()


def _send_until_the_node_stops_reading(port: int) -> tuple[socket.socket, bytes, int, bytes]:
    """Send IAMATs, reading no reply, until nothing more is taken for a second:
    the socket, the chunk sent over and over, the number of lines sent and the
    part of the chunk not sent."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    pad = "x" * 200  # long ids: fewer requests per buffered megabyte
    chunk = "".join(f"IAMAT {pad}{i} +1+1 1700000000.{i:09d}\n" for i in range(100)).encode()
    lines, pending = 0, b""
    last_progress, deadline = time.monotonic(), time.monotonic() + 20
    while time.monotonic() - last_progress < 1.0:
        assert time.monotonic() < deadline, f"the node kept reading ({lines:,} requests sent, none read)"
        if not pending:
            pending = chunk
        try:
            sent = sock.send(pending)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        lines += pending[:sent].count(b"\n")
        pending = pending[sent:]
        last_progress = time.monotonic()
    return sock, chunk, lines, pending


def test_an_idle_client_that_never_reads_is_cut_off(tmp_path: Path) -> None:
    """Found by a review: closing an idle client waits for its replies to be
    read, so one that never read kept its descriptor and max_connections slot
    until it went. Now it is cut off idle_timeout after the close."""
    herd = Herd(tmp_path, {"Solo": []}, extra_herd="idle_timeout = 2\nmax_connections = 1").start()
    try:
        wait_until(lambda: "connection closed" in herd["Solo"].access_log(), what="the readiness probe gone")
        sock = _send_until_the_node_stops_reading(herd["Solo"].port)[0]
        wait_until(lambda: "replies unread 2s after closing; cutting off" in herd["Solo"].access_log(),
                   what="the client cut off", timeout=15)
        reply = talk(herd["Solo"].port, "IAMAT next +1+1 1700000000")  # its max_connections slot is free
        assert reply.startswith(b"AT Solo ")
        sock.setblocking(True)
        sock.settimeout(10)
        try:
            while sock.recv(1 << 20):
                pass  # what the kernel held, then the reset
        except ConnectionResetError:
            pass
        sock.close()
    finally:
        herd.stop()


def test_a_long_pipeline_of_whatsats_costs_its_length_not_its_square(tmp_path: Path) -> None:
    """Found by a review: each WHATSAT waited on every reply queued before it,
    so 1,000 pipelined WHATSATs took 7.9 s (250: 0.22 s) and stalled the node
    long enough to drop its Redis connection and peer links. 2,000 took about
    four times that; now about a millisecond each."""
    herd = Herd(tmp_path, {"Solo": []}).start()
    try:
        assert talk(herd["Solo"].port, "IAMAT w1 +34.068930-118.445127 1700000000").startswith(b"AT ")
        started = time.monotonic()
        replies = talk(herd["Solo"].port, *["WHATSAT w1 5 1"] * 2000, timeout=60)
        took = time.monotonic() - started
        assert replies.count(b"AT Solo ") == 2000 and replies.endswith(b"\n\n")
        assert took < 10, took  # loose: the square of 2,000 took over 30 s
    finally:
        herd.stop()


def test_pipelined_whatsats_wait_for_a_slow_provider_together(tmp_path: Path) -> None:
    """Found by a review: WHATSATs pipelined on one connection searched one
    after another, so three refused for a provider that never answered came
    after three timeouts (15 s). WHATSATs with no IAMAT between them start
    together, four of a connection at a time; an IAMAT after them still
    waits for them, and a WHATSAT after it sees it."""
    herd = Herd(tmp_path, {"Solo": []}).start()  # the provider's timeout: 2 s
    try:
        node = herd["Solo"]
        assert talk(node.port, "IAMAT w1 +34.068930-118.445127 1700000000").startswith(b"AT ")
        herd.places.delay = 1.5
        started = time.monotonic()
        lines = [f"WHATSAT w1 {radius} 1" for radius in range(1, 7)]  # six questions, none cached
        replies = talk(node.port, *lines[:3], "bad line", *lines[3:], "IAMAT w1 +1+1 1700000001",
                       "WHATSAT w1 7 1", timeout=30)
        took = time.monotonic() - started
        answers = replies.split(b"\n\n")
        assert len(answers) == 8 and answers[-1] == b""
        assert all(a.startswith(b"AT Solo ") and b" +34.068930-118.445127 " in a.split(b"\n")[0]
                   for a in answers[:3] + answers[4:6])
        assert answers[3].startswith(b"? bad line\nAT Solo ")  # in its place
        moved, last = answers[6].split(b"\n", 1)
        assert moved.endswith(b" w1 +1+1 1700000001") and last.startswith(moved)  # after the IAMAT
        # Six searches four at a time, then the IAMAT, then the seventh: three
        # delays (one by one: seven).
        assert herd.places.most_at_once == 4 and len(herd.places.requests) == 7
        assert took < 6.5, took
    finally:
        herd.stop()


def test_requests_of_a_client_that_went_away_are_not_answered(tmp_path: Path) -> None:
    """Found by a review: after a client reset its connection, the node went
    on searching places for its queued WHATSATs and logged replies sent to
    a closed connection."""
    herd = Herd(tmp_path, {"Solo": []}).start()
    try:
        assert talk(herd["Solo"].port, "IAMAT w1 +34.068930-118.445127 1700000000").startswith(b"AT ")
        sock = socket.create_connection(("127.0.0.1", herd["Solo"].port))
        who = f"127.0.0.1:{sock.getsockname()[1]}"
        sock.sendall(b"WHATSAT w1 5 1\n" * 2000)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset, with most of the 2,000 unanswered
        wait_until(lambda: f"{who} connection closed" in herd["Solo"].access_log(), what="the close")
        time.sleep(0.5)  # what the node would still do for it
        log = herd["Solo"].access_log()
        after = log[log.index(f"{who} connection closed"):]
        assert f"{who} sent " not in after
        assert log.count(f"{who} sent ") < 2000
    finally:
        herd.stop()


def test_a_half_closed_client_reading_slowly_is_half_closed_once(tmp_path: Path) -> None:
    """Found by a review of the unread-replies pause: after a half-close, each
    drain of the node's buffer resumed reading, and the end of the client's
    input was reported (and logged) again each time."""
    herd = Herd(tmp_path, {"Solo": []}).start()
    try:
        pad = "x" * 200
        lines = [f"IAMAT {pad}{i} +1+1 1700000000.{i:09d}" for i in range(5000)]
        with socket.create_connection(("127.0.0.1", herd["Solo"].port), timeout=30) as sock:
            who = f"127.0.0.1:{sock.getsockname()[1]}"
            sock.sendall("".join(line + "\n" for line in lines).encode())
            sock.shutdown(socket.SHUT_WR)
            replies = b""
            while data := sock.recv(32 * 1024):  # slowly: the node's buffer fills and drains
                replies += data
                time.sleep(0.002)
        assert replies.count(b"\n") == 5000
        wait_until(lambda: f"{who} connection closed" in herd["Solo"].access_log(), what="the close")
        assert herd["Solo"].access_log().count(f"{who} half-closed by client") == 1
    finally:
        herd.stop()


def test_a_client_still_sending_when_the_node_closes_gets_every_reply_written(tmp_path: Path) -> None:
    # Found by a review: a node stopped (SIGTERM) while a client still sent
    # closed the socket with input unread; the kernel then sent a reset, which
    # made the client's system drop replies it held unread (up to a third of
    # them, the last one cut short). The node now half-closes and reads (and
    # drops) what still comes until the client closes.
    herd = Herd(tmp_path, {"Solo": []}).start()
    node = herd["Solo"]
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=30)
    stop = threading.Event()

    def send() -> None:
        line = b"IAMAT still.sending +1+1 1700000000\n" * 1000
        try:
            while not stop.is_set():
                sock.sendall(line)
        except OSError:
            pass  # the node is gone

    sender = threading.Thread(target=send)
    sender.start()
    try:
        wait_until(lambda: node.access_log().count("sent AT ") > 5000, what="replies flowing")
        node.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # not reading meanwhile: the replies wait in this system's buffer
        stop.set()  # (input still coming LINGER s after the node's FIN is dropped with a reset)
        sender.join(timeout=30)
        chunks = []
        while chunk := sock.recv(1 << 16):  # a reset raises ConnectionResetError here
            chunks.append(chunk)
        received = b"".join(chunks)
        assert node.wait(timeout=30) == 0
        sent = node.access_log().count("sent AT ")
        assert received.endswith(b"\n") and received.count(b"\n") == sent > 5000
    finally:
        stop.set()
        sock.close()
        sender.join(timeout=30)
        herd.stop()


def test_a_client_that_never_reads_is_cut_off_after_the_node_closes_for_a_long_line(tmp_path: Path) -> None:
    # Found by a review: a connection closed for a line too long kept reading
    # (and dropping) what the client sent, and each such read counted as
    # activity: a client that trickled bytes and never read its replies held
    # its slot and its megabytes of replies for good.
    herd = Herd(tmp_path, {"Solo": []}, provider="offline", extra_herd="idle_timeout = 1").start()
    node = herd["Solo"]
    try:
        wait_until(lambda: "offline places loaded" in node.log(), timeout=60, what="places loaded")
        assert talk(node.port, "IAMAT la +34.0522-118.2437 1700000000").startswith(b"AT Solo ")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", node.port))
        sock.sendall(b"WHATSAT la 50 20\n" * 900 + b"x" * 5000 + b"\n")  # megabytes of replies, then too long
        wait_until(lambda: "line over 4096 bytes; closing" in node.access_log(), what="the close")
        for _ in range(40):  # a byte now and then, its replies never read
            if "cutting off" in node.access_log():
                break
            try:
                sock.send(b"x")
            except OSError:  # the cut-off (a reset) came before its log line was read
                break
            time.sleep(0.25)
        wait_until(lambda: "replies unread 1s after closing; cutting off" in node.access_log(),
                   what="the cut-off")
        sock.close()
    finally:
        herd.stop()
