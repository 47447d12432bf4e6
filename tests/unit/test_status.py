"""herd status: the pure renderer and verdicts, the survey against real HTTP
servers on loopback standing in for nodes (one silent, one refusing), and
``herd status --once [--json]`` as a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fake_nodes import DIGEST, FakeNode, SilentNode, refused_port, row, status_doc, write_config
from harness import REPO, herd_cli, wait_until
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import gatherResults
from twisted.trial import unittest

from config.loader import load_config
from config.schema import NodeConfig, RedisAddress
from herd.tools.status import render
from herd.tools.survey import (
    NodeReport,
    StatusError,
    Surveyor,
    agreement,
    clock_skew,
    document,
    is_ok,
    read_status,
    status_url,
)

reactor: Any = global_reactor
FIVE = load_config(REPO / "config" / "herd.toml")  # Bailey Bona Campbell Clark Jaquez
NOW = 1733440000.0


def up(name: str, digest: str | None = DIGEST, clients: int | None = 12, skew: float = 0.0,
       **kw: Any) -> NodeReport:
    doc = status_doc(name, clients, digest, **kw)
    doc["clock"], doc["last_update"] = NOW + skew, NOW + skew - 1.5
    return NodeReport(name, doc, None, skew)


# -- pure -------------------------------------------------------------------


def test_a_row_is_the_nodes_own_view_and_skew_never_makes_it_down() -> None:
    reports = [up(n, links={"Bona": "up", "Campbell": "down"}, skew=120.0) if n == "Bailey" else up(n)
               for n in sorted(FIVE.nodes)]
    frame = render(FIVE, reports, NOW)
    bailey = row(frame, "Bailey")
    assert bailey.split()[:5] == ["Bailey", "up", "0.2.0", "12", DIGEST[:8]], bailey
    assert " 12.0 " in bailey and "1.5s ago" in bailey  # age by the node's own clock, skew aside
    assert "+120.00s" in bailey and bailey.endswith("Bona+ Campbell-")
    assert row(frame, "Clark").endswith("Bona? Jaquez?")  # links the node did not report: unknown
    assert f"agreement: all 5 nodes hold the same 12 clients (digest {DIGEST})" in frame
    assert is_ok(reports)



def test_a_herd_split_by_its_links_is_warned_about(tmp_path: Path) -> None:
    split = replace(FIVE, path="split.toml", nodes={
        name: replace(node, peers=()) for name, node in FIVE.nodes.items() if name in ("Bailey", "Bona")})
    frame = render(split, [up("Bailey"), up("Bona")], NOW)
    assert frame.endswith("\nwarning: split.toml: the links leave the herd in 2 parts that no update "
                          "crosses (Bailey | Bona); link them (peers = [...])")
    assert "warning" not in render(FIVE, [up(n) for n in sorted(FIVE.nodes)], NOW)


def test_no_redis_and_unreachable_rows() -> None:
    reports = [up(n) for n in sorted(FIVE.nodes)]
    reports[1] = up("Bona", digest=None, clients=None, redis="down")
    reports[2] = NodeReport("Campbell", None, "http://127.0.0.1:30002/status: connection refused")
    frame = render(FIVE, reports, NOW)
    assert row(frame, "Bona").split()[:5] == ["Bona", "NO", "REDIS", "0.2.0", "-"]
    campbell = row(frame, "Campbell")
    assert campbell.split()[1] == "UNREACHABLE" and campbell.endswith("Bailey? Bona? Jaquez?")
    assert "           http://127.0.0.1:30002/status: connection refused" in frame
    assert frame.endswith("agreement: the 3 node(s) with a readable digest hold the same 12 clients "
                          f"(digest {DIGEST}); unknown for Bona, Campbell")
    assert agreement(reports).agree and not is_ok(reports)


def test_nodes_that_differ_are_named_by_group() -> None:
    reports = [up("Bailey"), up("Bona", digest="ffff000011112222", clients=11), up("Clark")]
    found = agreement(reports)
    assert not found.agree and not is_ok(reports)
    assert found.describe() == (f"NODES DIFFER (Bailey, Clark: 12 clients (digest {DIGEST}); "
                                "Bona: 11 clients (digest ffff000011112222))")
    assert agreement([up("A", clients=1), up("B", clients=2)]).agree is False  # same digest, counts differ
    assert agreement([NodeReport("A", None, "x")]).describe() == "unknown (no node's digest could be read)"


def test_last_update_never_and_unknown() -> None:
    never = up("Bailey")
    assert never.status is not None
    never.status["last_update"] = None
    assert "never" in row(render(FIVE, [never], NOW), "Bailey")
    silent = up("Bailey")
    assert silent.status is not None
    del silent.status["last_update"]
    assert never.update_age() is None and silent.update_age() is None


def test_agreement_verdict_is_never_a_guess() -> None:
    assert agreement([up("A"), up("B")]).verdict is True
    assert agreement([up("A", clients=1), up("B", clients=2)]).verdict is False
    assert agreement([up("A", clients=1), up("B", clients=2), NodeReport("C", None, "x")]).verdict is False
    assert agreement([up("A"), NodeReport("B", None, "refused")]).verdict is None
    assert agreement([NodeReport("A", None, "x")]).verdict is None


def test_json_document() -> None:
    reports = [up("Bailey"), NodeReport("Bona", None, "refused")]
    doc = json.loads(json.dumps(document(reports)))
    assert doc["agree"] is None and doc["ok"] is False  # Bona's digest unread: unknown, not a guess
    assert doc["nodes"]["Bona"] == {"state": "UNREACHABLE", "error": "refused", "status": None, "skew": None}
    assert doc["nodes"]["Bailey"]["state"] == "up" and doc["nodes"]["Bailey"]["status"]["node"] == "Bailey"
    assert doc["warnings"] == [] and document(reports, ["split"])["warnings"] == ["split"]



def test_skew_leaves_out_the_time_a_node_held_its_answer() -> None:
    """Found by a review: a node whose Redis stalled answered a second late,
    and herd status showed its clock half a second off (either way)."""
    # Asked at 10.0, read by the node at once (its clock: 10.0, the same as
    # ours), answered after a second's wait for Redis, received at 11.0.
    assert clock_skew({"clock": 10.0, "held": 1.0}, 10.0, 11.0) == 0.0
    assert clock_skew({"clock": 10.0}, 10.0, 11.0) == -0.5  # a node that does not say
    assert clock_skew({"clock": 10.0, "held": 5.0}, 10.0, 11.0) == -0.5  # impossible: ignored
    assert clock_skew({"clock": 12.25, "held": 0.0}, 10.0, 10.5) == 2.0


def test_read_status_refuses_what_it_cannot_use() -> None:
    good = status_doc("Bailey", extra_field={"added": "later"})
    assert read_status(json.dumps(good).encode(), "Bailey") == good
    for body, reason in [
        (b"<html>", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (json.dumps(status_doc("Bona")).encode(), "answered as node 'Bona', not 'Bailey'"),
        (json.dumps({**good, "clock": "soon"}).encode(), "no clock"),
        (json.dumps(good).replace(str(good["clock"]), "NaN").encode(), "no clock"),
        (json.dumps({**good, "redis": "up"}).encode(), "no redis.state"),
        (json.dumps({**good, "clients": "12"}).encode(), "clients has the wrong type (str)"),
        (json.dumps({**good, "clients": True}).encode(), "clients has the wrong type (bool)"),
        (json.dumps({**good, "links": []}).encode(), "links has the wrong type"),
    ]:
        with pytest.raises(StatusError, match=reason.replace("(", r"\(").replace(")", r"\)")):
            read_status(body, "Bailey")
    minimal = {"node": "Bailey", "clock": 1.0, "redis": {"state": "up"}}
    report = NodeReport("Bailey", read_status(json.dumps(minimal).encode(), "Bailey"))
    assert (report.state, report.digest, report.link_mark("Bona")) == ("up", None, "?")
    assert not is_ok([report])  # no digest: agreement cannot be shown


def test_status_url() -> None:
    def node(host: str, admin: tuple[str, int] | None) -> NodeConfig:
        return NodeConfig("A", host, 10000, RedisAddress("redis://127.0.0.1:6400/0", "127.0.0.1", 6400),
                          admin=admin)

    assert status_url(node("10.0.0.11", ("10.0.0.11", 30000))) == "http://10.0.0.11:30000/status"
    assert status_url(node("10.0.0.11", ("0.0.0.0", 9100))) == "http://10.0.0.11:9100/status"
    assert status_url(node("fd00::1", ("::", 9100))) == "http://[fd00::1]:9100/status"
    assert status_url(node("10.0.0.11", None)) is None


# -- the survey against real HTTP servers ------------------------------------


class SurveyTest(unittest.TestCase):
    """Surveyor in this process's reactor against fake nodes on loopback."""

    def setUp(self) -> None:
        self.good = FakeNode(status_doc("Bailey", links={"Bona": "up"}))
        self.also = FakeNode(status_doc("Bona", links={"Bailey": "up", "Campbell": "down"}, skew=-30.0))
        self.silent = [SilentNode(), SilentNode()]
        self.wrong = FakeNode((404, b"no such page"))
        servers: list[FakeNode | SilentNode] = [self.good, self.also, self.wrong, *self.silent]
        for server in servers:
            self.addCleanup(server.close)
        self.dir = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.dir)

    def test_silent_nodes_time_out_together_and_the_rest_stay_right(self) -> Any:
        path = write_config(self.dir / "herd.toml", {
            "Bailey": self.good.port, "Bona": self.also.port, "Campbell": self.silent[0].port,
            "Clark": self.silent[1].port, "Jaquez": refused_port(), "Kiwi": self.wrong.port,
            "Lima": None})
        surveyor = Surveyor(reactor, load_config(path), timeout=1.0)
        started = time.monotonic()

        def check(reports: list[NodeReport]) -> Any:
            took = time.monotonic() - started
            # Both silent nodes waited out at once, not one after the other.
            self.assertTrue(0.9 <= took < 1.8, took)
            by = {r.name: r for r in reports}
            self.assertEqual([r.name for r in reports], sorted(by))
            self.assertEqual((by["Bailey"].state, by["Bailey"].digest, by["Bailey"].error),
                             ("up", DIGEST, None))
            assert by["Bailey"].skew is not None and by["Bona"].skew is not None
            self.assertTrue(abs(by["Bailey"].skew) < 0.5, by["Bailey"].skew)
            self.assertTrue(abs(by["Bona"].skew + 30.0) < 0.5, by["Bona"].skew)
            self.assertEqual(by["Bona"].link_mark("Campbell"), "-")
            for name in ("Campbell", "Clark"):
                self.assertEqual(by[name].state, "UNREACHABLE")
                error = by[name].error
                assert error is not None
                self.assertRegex(error, r"^http://127\.0\.0\.1:\d+/status: no answer within 1 s$")
            assert by["Jaquez"].error is not None and by["Kiwi"].error is not None
            self.assertTrue(by["Jaquez"].error.endswith(": connection refused"), by["Jaquez"].error)
            self.assertTrue(by["Kiwi"].error.endswith(": HTTP 404"), by["Kiwi"].error)
            self.assertIn('admin endpoint off', by["Lima"].error)
            self.assertTrue(agreement(reports).agree)
            self.assertFalse(is_ok(reports))
            return surveyor.close()

        return surveyor.survey().addCallback(check)

    def test_a_node_at_an_ipv6_address_is_read(self) -> Any:
        # It crashed herd status and herd check with a traceback (treq refused
        # the URL http://[::1]:<port>/status before sending it).
        v6 = FakeNode(status_doc("Bailey"), host="::1")
        self.addCleanup(v6.close)
        path = write_config(self.dir / "herd.toml", {"Bailey": f"[::1]:{v6.port}", "Bona": self.also.port})
        surveyor = Surveyor(reactor, load_config(path), timeout=2.0)

        def check(reports: list[NodeReport]) -> Any:
            self.assertEqual([(r.name, r.state, r.error) for r in reports],
                             [("Bailey", "up", None), ("Bona", "up", None)])
            return surveyor.close()

        return surveyor.survey().addCallback(check)

    def test_a_host_name_with_an_underscore_is_asked_and_a_url_refused_at_once_is_one_rows_error(self) -> Any:
        # treq refused "herd_b" (IDNA) at once, and the survey let it end the
        # command instead of making it that node's row.
        path = write_config(self.dir / "herd.toml", {"Bailey": self.good.port, "Bona": "herd_b:9"})
        surveyor = Surveyor(reactor, load_config(path), timeout=1.0)
        refusing = Surveyor(reactor, load_config(path), timeout=1.0)

        def refuse(url: str, name: str) -> Any:
            raise ValueError(f"no URL: {url}")

        refusing._fetch = refuse  # type: ignore[method-assign]

        def check(reports: list[NodeReport], refused: list[NodeReport]) -> Any:
            bona = reports[1].error
            assert bona is not None and "Codepoint" not in bona  # asked: no such host here
            self.assertEqual((refused[0].state, refused[1].error),
                             ("UNREACHABLE", "http://herd_b:9/status: no URL: http://herd_b:9/status"))
            return surveyor.close().addCallback(lambda _: refusing.close())

        d = gatherResults([surveyor.survey(), refusing.survey()])
        return d.addCallback(lambda both: check(*both))

    def test_a_kept_connection_serves_the_next_frame(self) -> Any:
        path = write_config(self.dir / "herd.toml", {"Bailey": self.good.port})
        surveyor = Surveyor(reactor, load_config(path), timeout=2.0, persistent=True)

        def again(reports: list[NodeReport]) -> Any:
            self.assertEqual(reports[0].state, "up")
            return surveyor.survey()

        def check(reports: list[NodeReport]) -> Any:
            self.assertEqual((reports[0].state, self.good.requests), ("up", 2))
            return surveyor.close()

        return surveyor.survey().addCallback(again).addCallback(check)


# -- the command --------------------------------------------------------------


def test_status_once_json_against_fake_nodes(tmp_path: Path) -> None:
    """No Redis, no secret: the environment holds neither."""
    nodes = {"Bailey": FakeNode(status_doc("Bailey", links={"Bona": "up", "Clark": "up"})),
             "Bona": FakeNode(status_doc("Bona", links={"Bailey": "up"})),
             "Clark": FakeNode(status_doc("Clark", digest=None, clients=None, redis="down"))}
    silent = SilentNode()
    try:
        path = write_config(tmp_path / "herd.toml", {
            **{n: f.port for n, f in nodes.items()}, "Campbell": silent.port, "Jaquez": refused_port()},
            {"Bailey": ["Bona", "Clark", "Campbell"], "Jaquez": ["Bona"]})
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERD")}
        started = time.monotonic()
        result = herd_cli("status", "--config", str(path), "--once", "--json", "--timeout", "1.5", env=env)
        assert time.monotonic() - started < 10
        assert result.returncode == 1, result.stderr
        doc = json.loads(result.stdout)
        states = {name: node["state"] for name, node in doc["nodes"].items()}
        assert states == {"Bailey": "up", "Bona": "up", "Campbell": "UNREACHABLE", "Clark": "NO REDIS",
                          "Jaquez": "UNREACHABLE"}
        assert doc["nodes"]["Campbell"]["error"].endswith("no answer within 1.5 s")
        assert doc["nodes"]["Jaquez"]["error"].endswith("connection refused")
        assert doc["nodes"]["Bailey"]["status"]["digest"] == DIGEST
        assert abs(doc["nodes"]["Bailey"]["skew"]) < 1.0
        assert (doc["agree"], doc["ok"]) == (None, False)  # three digests unread: unknown

        text = herd_cli("status", "--config", str(path), "--once", "--timeout", "1", env=env)
        assert text.returncode == 1 and "\x1b" not in text.stdout  # no screen codes into a pipe
        assert row(text.stdout, "Bailey").endswith("Bona+ Campbell? Clark+")
        assert row(text.stdout, "Clark").split()[1:3] == ["NO", "REDIS"]
        assert "unknown for Campbell, Clark, Jaquez" in text.stdout
    finally:
        servers: list[FakeNode | SilentNode] = [*nodes.values(), silent]
        for server in servers:
            server.close()


def test_status_once_exits_0_when_all_is_well(tmp_path: Path) -> None:
    nodes = {n: FakeNode(status_doc(n, links={"Bona" if n == "Bailey" else "Bailey": "up"}))
             for n in ("Bailey", "Bona")}
    try:
        path = write_config(tmp_path / "herd.toml", {n: f.port for n, f in nodes.items()},
                            {"Bailey": ["Bona"]})
        result = herd_cli("status", "--config", str(path), "--once")
        assert result.returncode == 0, result.stdout + result.stderr
        assert row(result.stdout, "Bailey").endswith("Bona+")
        assert row(result.stdout, "Bona").endswith("Bailey+")
        assert f"agreement: all 2 nodes hold the same 12 clients (digest {DIGEST})" in result.stdout
    finally:
        for server in nodes.values():
            server.close()


def ctrl_c_live_view(path: Path, node: FakeNode, requests: int, what: str,
                     then: Callable[[], object] = lambda: None,
                     args: Sequence[str] = ()) -> tuple[list[str], str]:
    """Run the live ``herd status`` on ``path`` (with ``args``) until ``node``
    has had ``requests`` requests, then Ctrl-C it (and ``then``); its frames
    and output."""
    live = subprocess.Popen([sys.executable, "-m", "herd", "status", "--config", str(path), *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_until(lambda: node.requests >= requests, timeout=20, what=what)
    finally:
        live.send_signal(signal.SIGINT)
        out, err = live.communicate(timeout=15)
        then()
    assert live.returncode == 0, err
    return out.split("herd status  ")[1:], out


def held_until(release: threading.Event, name: str) -> Callable[[], dict[str, Any]]:
    """An answer of node ``name`` that waits for ``release`` (20 s at most)."""

    def answer() -> dict[str, Any]:
        release.wait(20)
        return status_doc(name)

    return answer


def test_ctrl_c_during_a_survey_shows_no_frame_of_guesses(tmp_path: Path) -> None:
    # Found by a flaky test: Ctrl-C cancelled the survey in flight, and the
    # view printed a last frame with every node unreachable.
    release = threading.Event()
    bailey = FakeNode(status_doc("Bailey"), held_until(release, "Bailey"))
    try:
        path = write_config(tmp_path / "herd.toml", {"Bailey": bailey.port})
        frames, out = ctrl_c_live_view(path, bailey, 2, "a second request in flight", then=release.set)
        assert frames and all(row(f, "Bailey").split()[3:5] == ["12", DIGEST[:8]] for f in frames), out
    finally:
        bailey.close()


def live_view_with_bona_held(tmp_path: Path, bona_first: list[dict[str, Any]], requests: int,
                             what: str) -> tuple[list[str], str, int]:
    """The live view (Bona's timeout 10 s) of Bailey and a Bona that answers
    ``bona_first``, then holds its answers until the end; Ctrl-C once Bailey
    had ``requests`` requests, which must be well within Bona's timeout: the
    frames, the output and the requests Bona had."""
    release = threading.Event()
    bailey, bona = FakeNode(status_doc("Bailey")), FakeNode(*bona_first, held_until(release, "Bona"))
    try:
        path = write_config(tmp_path / "herd.toml", {"Bailey": bailey.port, "Bona": bona.port})
        started = time.monotonic()
        frames, out = ctrl_c_live_view(path, bailey, requests, what, then=release.set,
                                       args=["--timeout", "10"])
        assert time.monotonic() - started < 9.5, out  # within Bona's timeout: not held back by it
        return frames, out, bona.requests
    finally:
        release.set()
        bailey.close()
        bona.close()


def test_a_slow_node_holds_back_its_own_row_only(tmp_path: Path) -> None:
    # Found by a black-box review: each frame waited for the slowest node, up
    # to the timeout, so one stopped node made every row late.
    frames, out, bona_requests = live_view_with_bona_held(tmp_path, [status_doc("Bona")], 5,
                                                          "Bailey asked five times")
    assert bona_requests == 2 and len(frames) >= 3, out
    assert "no answer yet" in frames[-1] and row(frames[-1], "Bona").split()[1] == "up", out
    assert "; unknown for Bona" in frames[-1], out  # its digest is not of this moment


def test_a_node_slow_from_the_start_holds_back_its_own_row_only(tmp_path: Path) -> None:
    # Found by a review: the first frame waited for every node's first answer,
    # so a node that never answered held the whole view for the timeout.
    frames, out, bona_requests = live_view_with_bona_held(tmp_path, [], 3, "Bailey asked three times")
    assert frames and bona_requests == 1, out
    first = frames[0]
    assert row(first, "Bailey").split()[3:5] == ["12", DIGEST[:8]], out
    assert row(first, "Bona").split()[1:5] == ["asking", "-", "-", "-"], out  # no figures, no guess
    assert "no answer yet" in first and "; unknown for Bona" in first, out


def test_live_view_refreshes_until_ctrl_c(tmp_path: Path) -> None:
    bailey = FakeNode(status_doc("Bailey"), status_doc("Bailey", 13, "ffff000011112222"))
    try:
        path = write_config(tmp_path / "herd.toml", {"Bailey": bailey.port})
        # A survey begins once the frame before it is printed, and Ctrl-C
        # during a survey prints no frame: so wait for the fourth (a CI run
        # caught the third's frame lost to a Ctrl-C during its survey).
        frames, out = ctrl_c_live_view(path, bailey, 4, "a fourth survey: three frames printed")
        assert len(frames) >= 3 and "\x1b" not in out  # not a terminal: no screen codes
        assert row(frames[0], "Bailey").split()[3:5] == ["12", DIGEST[:8]]
        assert row(frames[-1], "Bailey").split()[3:5] == ["13", "ffff0000"]  # each frame reads again
        once = herd_cli("status", "--config", str(path), "--json")  # --json: one frame, then exit
        assert once.returncode == 0 and json.loads(once.stdout)["ok"] is True
    finally:
        bailey.close()


def test_usage_and_config_errors_exit_2(tmp_path: Path) -> None:
    for args in (["--timeout", "0"], ["--timeout", "soon"], ["--bogus"]):
        result = herd_cli("status", "--config", str(REPO / "config" / "herd.toml"), "--once", *args)
        assert result.returncode == 2, (args, result.stderr)
    result = herd_cli("status", "--config", str(tmp_path / "missing.toml"), "--once")
    assert result.returncode == 2 and "Traceback" not in result.stderr


@pytest.mark.parametrize("args, down, verdict", [
    (["status", "--once"], False, 0), (["status", "--once", "--json"], False, 0), (["status"], False, 0),
    (["check"], False, 0), (["check", "--json"], False, 0), (["--version"], False, 0),
    (["check"], True, 1), (["status", "--once"], True, 1)])
def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path, args: list[str], down: bool,
                                                          verdict: int) -> None:
    # Found by a review: `herd check | true` printed a BrokenPipeError
    # traceback and exited 1. The command's verdict stays its exit status.
    bailey = FakeNode(status_doc("Bailey"))
    try:
        nodes: dict[str, int | str | None] = {"Bailey": bailey.port}
        if down:
            nodes["Bona"] = refused_port()
        path = write_config(tmp_path / "herd.toml", nodes)
        config = ["--config", str(path)] if args[0] != "--version" else []
        command = subprocess.Popen([sys.executable, "-m", "herd", *args, *config], cwd=REPO,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert command.stdout is not None
        command.stdout.close()  # no reader: the first write fails (EPIPE)
        _, err = command.communicate(timeout=30)
        assert (command.returncode, err) == (verdict, b"")
    finally:
        bailey.close()


def test_stdout_broken_tells_a_pipe_without_reader() -> None:
    read, write = os.pipe()
    script = "import sys; from herd.tools.output import stdout_broken; sys.exit(3 if stdout_broken() else 4)"
    try:
        alive = subprocess.run([sys.executable, "-c", script], cwd=REPO, stdout=write, timeout=30)
        os.close(read)
        gone = subprocess.run([sys.executable, "-c", script], cwd=REPO, stdout=write, timeout=30)
    finally:
        os.close(write)
    assert (alive.returncode, gone.returncode) == (4, 3)


@pytest.mark.parametrize("command", [["check"], ["status", "--once"], ["status", "--once", "--json"]])
def test_ctrl_c_of_a_one_shot_survey_exits_130_with_no_verdict(tmp_path: Path, command: list[str]) -> None:
    # Found by a README walkthrough: the reads that Ctrl-C cut short were shown
    # as unreachable nodes ("Connection lost"), with exit 1.
    silent = SilentNode()
    try:
        path = write_config(tmp_path / "herd.toml", {"Far": silent.port})
        argv = [sys.executable, "-m", "herd", *command, "--config", str(path), "--timeout", "20"]
        run = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        wait_until(lambda: len(silent.held) > 0, timeout=20, what="the node asked")
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=30)
        assert (run.returncode, out) == (130, ""), (out, err)
    finally:
        silent.close()
