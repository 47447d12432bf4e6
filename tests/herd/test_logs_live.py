"""A node's two log streams end to end: the access log (a file) and the event
log (stdout), with journald priorities, levels, and a clean stop that logs no
error."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from cluster import Herd, talk
from harness import REPO, child_env, port_open, wait_until

from herd.version import VERSION
from herd.wire.handshake import PROTOCOL


def test_a_client_session_and_peer_lines_go_to_the_access_log_only(tmp_path: Path) -> None:
    herd = Herd(tmp_path, {"A": ["B"], "B": []}).start()
    try:
        herd.wait_links()
        talk(herd["A"].port, "IAMAT access.client +1+1 1700000000")
        wait_until(lambda: "sent U " in herd["A"].access_log() or "sent F " in herd["A"].access_log(),
                   what="the update flooded")
        time.sleep(1.5)  # heartbeats go out after 1 s without a line: none is logged
        herd["A"].stop()
        access, events = herd["A"].access_log(), herd["A"].log()
    finally:
        herd.stop()
    stamped = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00 (.*)")
    lines = [stamped.fullmatch(line) for line in access.splitlines()]
    assert all(lines), access
    session = [m.group(1) for m in lines if m and m.group(1).startswith("127.0.0.1:")]
    who = next(s.split(" ")[0] for s in session if "recv IAMAT access.client" in s)
    mine = [s.split(" ", 1)[1] for s in session if s.startswith(who + " ")]
    assert mine[0] == "connection opened" and mine[1] == "recv IAMAT access.client +1+1 1700000000"
    assert mine[-1].startswith("connection closed (")
    assert any(s.startswith("sent AT A ") and s.endswith(" access.client +1+1 1700000000") for s in mine)
    assert any(m.group(1).startswith("peer B (dialled) sent HERD-HELLO A B ") for m in lines if m)
    assert not any(m.group(1).endswith((" HB", " recv HB", " sent HB")) for m in lines if m)
    assert "access.client" not in events and "HERD-HELLO" not in events and "connection opened" not in events
    assert "peer B link up" in events and "stopped" in events


def test_access_log_off_and_the_default_state_directory(tmp_path: Path) -> None:
    off = Herd(tmp_path / "off", {"Solo": []}, extra_herd='access_log = "off"', access_log=False).start()
    default = Herd(tmp_path / "default", {"Solo": []}, access_log=False)
    state = tmp_path / "default" / "state" / "Solo"
    try:
        default["Solo"].redis.start()
        default["Solo"].start(env={"STATE_DIRECTORY": str(state)})
        for herd in (off, default):
            talk(herd["Solo"].port, "IAMAT where.client +1+1 1700000000")
        wait_until(lambda: "recv IAMAT where.client" in (state / "access.log").read_text()
                   if (state / "access.log").exists() else False, what="the default access log")
        assert f"access log: {state / 'access.log'}" in default["Solo"].log()
        assert "access log: off" in off["Solo"].log()
        off["Solo"].stop()
        assert not [p for p in (tmp_path / "off").rglob("*access*")]
    finally:
        off.stop()
        default.stop()


def event_log_of_a_refused_handshake(tmp_path: Path, *args: str,
                                     journal: bool = False) -> tuple[Herd, list[str]]:
    """Run a one-node herd whose node runs with ``args``, its output in a file
    (which ``journal`` makes $JOURNAL_STREAM name, as systemd would); a
    stranger on its peer port (a warning), then SIGTERM (a clean stop, exit
    0). The herd (stopped) and the lines the node wrote."""
    herd = Herd(tmp_path, {"Solo": []})
    herd["Solo"].redis.start()
    path = tmp_path / "events.log"
    with open(path, "wb") as out:
        st = os.fstat(out.fileno())
        stream = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"} if journal else {}
        proc = subprocess.Popen([*herd["Solo"].argv, *args], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT,
                                env=child_env(HERD_SECRET=herd.secret, GOOGLE_PLACES_KEY="k", **stream))
    try:
        ports = (herd["Solo"].port, herd["Solo"].ports.peer)
        wait_until(lambda: proc.poll() is not None or all(map(port_open, ports)), what="listening")
        assert proc.poll() is None, path.read_text()  # (it failed once in CI, its output lost)
        talk(herd["Solo"].ports.peer, f"HERD-HELLO Stranger Solo 0123 {PROTOCOL.decode()}")
        talk(herd["Solo"].port, "IAMAT after.warning +1+1 1700000000")
        wait_until(lambda: "peer handshake refused" in path.read_text(), what="the warning")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        herd.stop()
    return herd, path.read_text().splitlines()


def test_json_under_journald_has_priorities_and_fields(tmp_path: Path) -> None:
    herd, lines = event_log_of_a_refused_handshake(tmp_path, "--log-format", "json", journal=True)
    assert all(re.match(r"<[2-7]>\{", line) for line in lines), lines
    records = [(int(line[1]), json.loads(line[3:])) for line in lines]
    assert all(prio == {"info": 6, "warning": 4}[r["level"]] for prio, r in records), records
    [(_, warning)] = [(p, r) for p, r in records if r["level"] == "warning"]
    assert warning["message"].endswith(
        "peer handshake refused at HERD-HELLO: Stranger is not a neighbour of Solo in this node's config")
    assert warning["who"].startswith("peer port 127.0.0.1:") and warning["node"] == "Solo"
    listening = next(r for _, r in records if r["message"].startswith("node Solo listening"))
    assert (listening["host"], listening["port"]) == ("127.0.0.1", herd["Solo"].port)


def test_log_level_warning_hides_info_and_a_prefix_can_be_asked_for(tmp_path: Path) -> None:
    _, lines = event_log_of_a_refused_handshake(tmp_path, "--log-level", "warning", "--log-prefix")
    assert len(lines) == 2, lines  # the start line (it names the version, at any level), the warning
    assert lines[0].startswith("<6>2") and f" [Solo] info: herd {VERSION} node Solo starting" in lines[0]
    assert lines[1].startswith("<4>2") and " [Solo] warning: peer port " in lines[1], lines


def keep_sending(port: int, name: str, stop: threading.Event) -> None:
    """IAMATs to ``port`` on one connection, pipelined, until ``stop`` or the node closes it."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        i = 0
        while not stop.is_set():
            sock.sendall(b"".join(b"IAMAT %s.%d +1+1 1700000000.%d\n" % (name.encode(), i, j)
                                  for j in range(50)))
            i += 1
            time.sleep(0.005)


def test_a_clean_stop_logs_no_errors(tmp_path: Path) -> None:
    """SIGTERM to both nodes of a linked pair while clients send updates: the
    pulls and stores that their closing peer connections and Redis cut short
    are not errors."""
    herd = Herd(tmp_path, {"A": ["B"], "B": []}).start()
    try:
        for attempt in range(3):  # the restarted nodes pull at link-up
            if attempt:
                herd.start_nodes()
            herd.wait_links()
            stop = threading.Event()
            senders = [threading.Thread(target=keep_sending, args=(herd[n].port, n, stop)) for n in "AB"]
            for sender in senders:
                sender.start()
            time.sleep(0.3)
            for node in herd.nodes.values():
                node.send_signal(signal.SIGTERM)
            for node in herd.nodes.values():
                assert node.wait(timeout=15) == 0
            stop.set()
            for sender in senders:
                sender.join(10)
        for node in herd.nodes.values():
            log = node.log()
            assert log.count("] info: stopped") == 3
            bad = [line for line in log.splitlines() if re.search(r"\] (error|critical): ", line)]
            assert bad == [], bad
    finally:
        herd.stop()


def test_an_access_log_that_cannot_be_opened_is_a_configuration_error(tmp_path: Path) -> None:
    # Found by a review: it exited 1 with a line that named neither the file
    # nor the key, and herd up restarted such nodes forever.
    (tmp_path / "file").write_text("not a directory")
    herd = Herd(tmp_path, {"Solo": []}, extra_herd=f'access_log = "{tmp_path}/file/{{node}}.log"',
                access_log=False)
    try:
        done = subprocess.run(herd["Solo"].argv, cwd=REPO, capture_output=True, text=True, timeout=30,
                              env=child_env(HERD_SECRET=herd.secret, GOOGLE_PLACES_KEY="k"))
    finally:
        herd.stop()
    assert (done.returncode, done.stderr) == (
        2, f"herd: {herd.config}: herd.access_log: cannot open '{tmp_path}/file/Solo.log' (for node Solo): "
           "Not a directory\n")
