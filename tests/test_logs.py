"""herd.logs and herd.rotating: the event log (levels, text, JSON, journald
prefixes), the access log and its rotation, escaping what comes from the wire,
and throttling repeated errors."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cluster import Herd, talk
from harness import REPO, env_with, port_open, wait_until
from twisted.internet.task import Clock
from twisted.logger import FilteringLogObserver, Logger, LogLevel, globalLogPublisher

from herd import systemd
from herd.logs import AccessLog, EventLog, Throttle, level_filter, loggable
from herd.rotating import RotatingFile


def test_loggable_escapes_what_could_end_a_line_or_drive_a_terminal() -> None:
    assert loggable(b"plain caf\xc3\xa9 \tTAB") == "plain caf\u00e9 \\tTAB"
    assert loggable(b"a\rb\nc\x1b[31m\x00\x7f\xff") == "a\\rb\\nc\\x1b[31m\\x00\\x7f\\xff"
    assert loggable("\u2028\u2029\u009b\u202e".encode()) == "\\u2028\\u2029\\x9b\\u202e"
    assert loggable(b"literal \\n, not a newline") == "literal \\\\n, not a newline"
    assert loggable(b"\\\xff") == "\\\\\\xff"  # a backslash, then a byte that is not UTF-8


def test_throttle_logs_the_first_events_of_a_window_and_sums_up_the_rest() -> None:
    clock = Clock()
    summaries: list[tuple[int, str]] = []
    throttle = Throttle(clock, lambda n, why: summaries.append((n, why)), limit=3, window=1.0)
    assert [throttle.allow(f"cause {i}") for i in range(5)] == [True, True, True, False, False]
    assert summaries == []
    clock.advance(1.0)
    assert summaries == [(2, "cause 4")]
    assert throttle.allow("again")  # a new window
    clock.advance(5.0)
    assert summaries == [(2, "cause 4")]  # nothing was left out since
    for i in range(4):
        throttle.allow(f"late {i}")
    clock.advance(0.999)  # its timer is due at 1.0 ...
    clock.advance(0.001)
    assert summaries == [(2, "cause 4"), (1, "late 3")]
    for i in range(4):
        throttle.allow(f"next {i}")  # ... one window's count never runs into the next one's
    clock.advance(1.0)
    assert summaries == [(2, "cause 4"), (1, "late 3"), (1, "next 3")]


# --- the event log: levels, text and JSON, journald prefixes ------------------------------


def event_log(fmt: str = "text", level: str = "info",
              prefix: bool = False) -> tuple[Logger, io.StringIO, EventLog]:
    out = io.StringIO()
    events = EventLog(out, "Bailey", fmt, prefix)
    return Logger(namespace="herd", observer=FilteringLogObserver(events, [level_filter(level)])), out, events


def test_text_lines_name_the_node_and_the_level() -> None:
    log, out, events = event_log()
    log.info("peer {peer} link up", peer="Bona")
    log.warn("Redis {how}", how="slow")
    log.error("pull from {peer} failed", peer="Bona")
    log.critical("boom")
    log.debug("not shown at info")
    events.flush()
    lines = out.getvalue().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == [
        "[Bailey] info: peer Bona link up", "[Bailey] warning: Redis slow",
        "[Bailey] error: pull from Bona failed", "[Bailey] critical: boom"]
    stamp = lines[0].split(" ")[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", stamp), stamp


def test_json_lines_carry_the_events_fields_as_keys() -> None:
    log, out, events = event_log("json")
    log.warn("peer {peer} sent {what}: {line}", peer="Bona", what="a malformed record", line="AT x",
             n=3, ratio=0.5, raw=b"\x00a", gone=object(), nan=float("nan"), nested={"a": [1, 2]})
    events.flush()
    [record] = [json.loads(line) for line in out.getvalue().splitlines()]
    assert record.pop("time").endswith("+00:00")
    assert record == {"node": "Bailey", "level": "warning",
                      "message": "peer Bona sent a malformed record: AT x", "peer": "Bona",
                      "what": "a malformed record", "line": "AT x", "n": 3, "ratio": 0.5,
                      "raw": "\\x00a", "nested": {"a": [1, 2]}}  # not: gone, nan, log_* keys


def test_a_failure_keeps_its_traceback() -> None:
    for fmt in ("text", "json"):
        log, out, events = event_log(fmt, prefix=True)
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            log.failure("internal error on {line}", line="IAMAT x")
        events.flush()
        text = out.getvalue()
        assert "ZeroDivisionError" in text
        if fmt == "json":
            [record] = [json.loads(line[3:]) for line in text.splitlines()]
            assert record["level"] == "critical" and "ZeroDivisionError" in record["traceback"]
        else:  # every line of it is one journal entry, at the event's priority
            assert all(line.startswith("<2>") for line in text.splitlines()), text


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_priority_prefixes_for_journald(fmt: str) -> None:
    log, out, events = event_log(fmt, level="debug", prefix=True)
    for level in ("debug", "info", "warn", "error", "critical"):
        getattr(log, level)("an event at {name}", name=level)
    events.flush()
    lines = out.getvalue().splitlines()
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>", "<2>"]
    if fmt == "json":
        assert [json.loads(line[3:])["level"] for line in lines] == ["debug", "info", "warning", "error",
                                                                    "critical"]


def test_log_level_filters_and_twisted_chatter_needs_a_warning() -> None:
    log, out, events = event_log(level="warning")
    log.info("hidden")
    log.warn("shown")
    twisted = Logger(namespace="twisted.application.internet.ClientService",
                     observer=FilteringLogObserver(events, [level_filter("info")]))
    twisted.info("Scheduling retry 1 to connect")  # every redial of a peer that is down
    Logger(namespace="twisted.internet.base", observer=FilteringLogObserver(
        events, [level_filter("info")])).info("Received SIGTERM, shutting down.")
    Logger(namespace="twisted.python.log", observer=FilteringLogObserver(
        events, [level_filter("debug")])).info("(TCP Port 4000 Closed)")  # at debug, everything
    events.flush()
    assert [line.split(": ", 1)[1] for line in out.getvalue().splitlines()] == [
        "shown", "Received SIGTERM, shutting down.", "(TCP Port 4000 Closed)"]


def test_journal_stream_is_recognised_by_device_and_inode(tmp_path: Path) -> None:
    with open(tmp_path / "out", "w") as out, open(tmp_path / "other", "w") as other:
        st = os.fstat(out.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert systemd.is_journal_stream(out.fileno(), env)
        assert not systemd.is_journal_stream(other.fileno(), env)  # inherited, but not ours
        assert not systemd.is_journal_stream(out.fileno(), {"JOURNAL_STREAM": "garbage"})
        assert not systemd.is_journal_stream(out.fileno(), {"JOURNAL_STREAM": ""})


# --- the access log and its rotation ----------------------------------------------------------


def test_access_lines_have_a_timestamp_who_and_what(tmp_path: Path) -> None:
    access = AccessLog(RotatingFile(tmp_path / "a" / "access.log", 1 << 20, 2))
    access.note("127.0.0.1:5000", "connection opened")
    access.line("127.0.0.1:5000", "recv", loggable(b"IAMAT kiwi +1+1 1\x1b"))
    access.close()
    lines = (tmp_path / "a" / "access.log").read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == ["127.0.0.1:5000 connection opened",
                                                        "127.0.0.1:5000 recv IAMAT kiwi +1+1 1\\x1b"]
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00 ", line) for line in lines)


def test_rotation_keeps_at_most_keep_old_files(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    rotating = RotatingFile(path, 100, 2)
    for i in range(50):
        rotating.write(b"line %02d ...........\n" % i)  # 20 bytes: five to a file
    rotating.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["access.log", "access.log.1", "access.log.2"]
    assert path.read_bytes().startswith(b"line 45") and path.stat().st_size == 100
    assert (tmp_path / "access.log.1").read_bytes().startswith(b"line 40")
    assert (tmp_path / "access.log.2").read_bytes().startswith(b"line 35")
    again = RotatingFile(path, 100, 2)  # a restart continues the file, counting what it holds
    again.write(b"x\n")
    again.close()
    assert path.read_bytes() == b"x\n" and (tmp_path / "access.log.1").read_bytes().startswith(b"line 45")


def test_rotation_with_nothing_kept_and_a_line_longer_than_the_limit(tmp_path: Path) -> None:
    rotating = RotatingFile(tmp_path / "log", 10, 0)
    rotating.write(b"12345678\n")
    rotating.write(b"a line longer than ten bytes\n")  # never split
    rotating.write(b"z\n")
    rotating.close()
    assert [p.name for p in tmp_path.iterdir()] == ["log"]
    assert (tmp_path / "log").read_bytes() == b"z\n"


def test_an_unwritable_access_log_is_reported_once(tmp_path: Path) -> None:
    seen: list[dict[str, object]] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        access = AccessLog(RotatingFile(tmp_path / "access.log", 1 << 20, 1))
        access.file.close()  # (as after a rotation that could not reopen it)
        for _ in range(3):
            access.line("x", "recv", "y")
            access.flush()
    finally:
        globalLogPublisher.removeObserver(seen.append)
    errors = [e for e in seen if e.get("log_level") == LogLevel.error]
    assert len(errors) == 1 and "access log" in str(errors[0]["log_format"])


# --- a node's two streams, end to end ---------------------------------------------------------


def test_a_client_session_and_peer_lines_go_to_the_access_log_only(tmp_path: Path) -> None:
    herd = Herd(tmp_path, {"A": ["B"], "B": []}).start()
    try:
        herd.wait_links()
        talk(herd["A"].port, "IAMAT access.client +1+1 1700000000")
        wait_until(lambda: "sent U " in herd["A"].access_log() or "sent F " in herd["A"].access_log(),
                   what="the update flooded")
        time.sleep(1.5)  # heartbeats go out after 1 s without a line: none is logged
        herd["A"].kill(signal.SIGTERM)
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
    off = Herd(tmp_path / "off", {"Solo": []}, extra_herd='access_log = "off"').start()
    default = Herd(tmp_path / "default", {"Solo": []}, access_log=False)
    state = tmp_path / "default" / "state" / "Solo"
    try:
        default["Solo"].redis.start()
        default["Solo"].start(STATE_DIRECTORY=str(state))
        for herd in (off, default):
            talk(herd["Solo"].port, "IAMAT where.client +1+1 1700000000")
        wait_until(lambda: "recv IAMAT where.client" in (state / "access.log").read_text()
                   if (state / "access.log").exists() else False, what="the default access log")
        assert f"access log: {state / 'access.log'}" in default["Solo"].log()
        assert "access log: off" in off["Solo"].log()
        off["Solo"].kill(signal.SIGTERM)
        assert not [p for p in (tmp_path / "off").rglob("*access*")]
    finally:
        off.stop()
        default.stop()


def run_solo(tmp_path: Path, *args: str, journal: bool = False) -> tuple[Herd, subprocess.Popen[bytes], Path]:
    """A one-node herd whose node runs with ``args``, its output in a file
    (which ``journal`` makes $JOURNAL_STREAM name, as systemd would)."""
    herd = Herd(tmp_path, {"Solo": []})
    herd["Solo"].redis.start()
    path = tmp_path / "events.log"
    with open(path, "wb") as out:
        st = os.fstat(out.fileno())
        stream = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"} if journal else {}
        proc = subprocess.Popen([*herd["Solo"].command(), *args], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT,
                                env=env_with(HERD_SECRET=herd.secret, GOOGLE_PLACES_KEY="k", **stream))
    wait_until(lambda: port_open(herd["Solo"].port), what="listening")
    return herd, proc, path


def refused_handshake(herd: Herd) -> None:
    """A stranger on the peer port: a warning in the node's event log."""
    talk(herd["Solo"].ports.peer, "HERD-HELLO Stranger Solo 0123 3")
    talk(herd["Solo"].port, "IAMAT after.warning +1+1 1700000000")


def test_json_under_journald_has_priorities_and_fields(tmp_path: Path) -> None:
    herd, proc, path = run_solo(tmp_path, "--log-format", "json", journal=True)
    try:
        refused_handshake(herd)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        herd.stop()
    lines = path.read_text().splitlines()
    assert all(re.match(r"<[2-7]>\{", line) for line in lines), lines
    records = [(int(line[1]), json.loads(line[3:])) for line in lines]
    assert all(prio == {"info": 6, "warning": 4}[r["level"]] for prio, r in records), records
    [(_, warning)] = [(p, r) for p, r in records if r["level"] == "warning"]
    assert warning["message"].endswith("peer handshake refused: HERD-HELLO")
    assert warning["who"].startswith("peer port 127.0.0.1:") and warning["node"] == "Solo"
    listening = next(r for _, r in records if r["message"].startswith("node Solo listening"))
    assert (listening["host"], listening["port"]) == ("127.0.0.1", herd["Solo"].port)


def test_log_level_warning_hides_info_and_a_prefix_can_be_asked_for(tmp_path: Path) -> None:
    herd, proc, path = run_solo(tmp_path, "--log-level", "warning", "--log-prefix")
    try:
        refused_handshake(herd)
        wait_until(lambda: "peer handshake refused" in path.read_text(), what="the warning")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        herd.stop()
    lines = path.read_text().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("<4>2") and " [Solo] warning: peer port " in lines[0], lines


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
    herd = Herd(tmp_path, {"A": ["B"], "B": []})
    try:
        for _ in range(3):  # the restarted nodes pull at link-up
            herd.start()
            herd.wait_links()
            stop = threading.Event()
            senders = [threading.Thread(target=keep_sending, args=(herd[n].port, n, stop)) for n in "AB"]
            for sender in senders:
                sender.start()
            time.sleep(0.3)
            for node in herd.nodes.values():
                node.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            for node in herd.nodes.values():
                assert node.proc.wait(timeout=15) == 0  # type: ignore[union-attr]
                node.proc = None
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


def test_an_access_log_that_cannot_be_opened_stops_the_node_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    herd = Herd(tmp_path, {"Solo": []}, extra_herd=f'access_log = "{tmp_path}/file/{{node}}.log"')
    try:
        done = subprocess.run(herd["Solo"].command(), cwd=REPO, capture_output=True, text=True, timeout=30,
                              env=env_with(HERD_SECRET=herd.secret, GOOGLE_PLACES_KEY="k"))
    finally:
        herd.stop()
    assert done.returncode == 1
    prefix = f"herd: Solo: cannot open the access log {tmp_path}/file/Solo.log: "
    assert done.stderr.startswith(prefix) and done.stderr.count("\n") == 1, done.stderr
