"""``herd bench``: a short real run of every scenario (real redis-servers and
nodes, the real load generator) must finish quickly and report sane numbers.
The figures are not checked against the SPEC targets here; docs/BENCHMARKS.md
has those."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from harness import REPO

from herd.tools import bench, bench_instructions, bench_report
from herd.tools.bench_load import client_time, iamat, percentile
from herd.tools.harness import ChildProcess, RedisProcess
from herd.wire.client import GEO_LAT_LIMIT, Iamat, parse_request


def run_bench(*flags: str, timeout: float = 110) -> tuple[dict[str, Any], float]:
    """``python -m herd.tools.bench FLAGS --json``: the report and the seconds it took."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "herd.tools.bench", *flags, "--json"], cwd=REPO,
                            capture_output=True, text=True, timeout=timeout)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout), elapsed


def assert_latencies(run: dict[str, Any]) -> None:
    assert 0 < run["p50_ms"] <= run["p99_ms"] <= run["max_ms"], run


def test_short_run_of_load_whatsat_and_memory() -> None:
    report, elapsed = run_bench("--only", "throughput,single,ceiling,floor,whatsat,memory", "--seconds", "1",
                                "--whatsat-seconds", "0.5", "--clients", "2000")
    assert elapsed < 100
    assert report["machine"]["nproc"] >= 1 and report["commit"]
    results = report["results"]
    for name in ("throughput", "single", "ceiling"):
        run = results[name]
        assert run["rate"] > 0 and run["errors"] == 0, run
        assert_latencies(run)
    assert 0 < report["throughput_ratio"] < 10 and 0 < report["single_ratio"] < 10
    assert_cpu_figures(report)
    for radius in ("1km", "20km", "50km"):
        assert_latencies(results["whatsat"][radius])
    assert results["whatsat"]["50km"]["results"] == 20
    assert 0 < results["memory"]["bytes_per_client"] < 10_000
    assert {f["scenario"] for f in report["figures"]} == {
        "throughput", "single", "ceiling", "floor", "whatsat", "memory"}


def assert_cpu_figures(report: dict[str, Any]) -> None:
    """Every update counted once every node held it; the floor's two parts and
    the ratios are sane (their values are docs/BENCHMARKS.md's business)."""
    results = report["results"]
    for name, nodes in (("throughput", 3), ("single", 1)):
        run = results[name]
        assert run["nodes"] == nodes and run["updates"] >= run["requests"] > 0, run
        per = run["cpu_us_per_update"]
        assert 1 < per["all"] < 100_000 and per["node"] > 0 and per["redis"] > 0, per
        assert abs(per["all"] - sum(v for k, v in per.items() if k != "all")) < 1, per
        # Every process waits for work now and then (reads, Redis's fsync).
        switches = run["switches_per_update"]
        assert switches.keys() == per.keys() and all(0 < v < 100 for v in switches.values()), switches
        assert switches["all"] == pytest.approx(sum(v for k, v in switches.items() if k != "all"), abs=0.01)
    assert ("peers" in results["throughput"]["cpu_us_per_update"]
            and "peers" not in results["single"]["cpu_us_per_update"])
    assert 0 < results["ceiling"]["cpu_us_per_request"] < 10_000
    floor = results["floor"]
    assert floor["records"] > 0 and 0 < floor["cpu_us_per_record"] < 10_000 and floor["fsync"] == "always"
    assert report["floor_us_per_node"] == pytest.approx(
        results["ceiling"]["cpu_us_per_request"] + floor["cpu_us_per_record"], abs=0.01)
    assert report["floor_rate_ratio"] == pytest.approx(floor["rate"] / results["ceiling"]["rate"], abs=0.001)
    assert report["cpu_ratio"] == pytest.approx(
        results["throughput"]["cpu_us_per_update"]["all"] / (3 * report["floor_us_per_node"]), abs=0.01)
    named = {f["figure"]: f for f in report["figures"] if f["scenario"] in ("floor", "single")}
    assert named["throughput: CPU per update / floor of 3 node(s)"]["target"] == "<= 2"
    assert named["single node / ceiling (req/s)"]["target"] == ">= 0.333"


def test_short_run_of_propagation_and_reconcile() -> None:
    report, elapsed = run_bench("--only", "propagation,memory,reconcile,startup", "--clients", "2000",
                                "--propagation-seconds", "0.5", "--rate", "200")
    assert elapsed < 90
    prop = report["results"]["propagation"]
    assert (prop["five"]["to"], prop["five"]["hops"]) == ("Jaquez", 2)
    assert (prop["line"]["to"], prop["line"]["hops"]) == ("D", 3)
    assert prop["line_light"]["rate"] == 100
    chain = prop.pop("fsync_chain")  # appendfsync always: SPEC 8's reference, three fsync'd writes in a row
    assert chain["chains"] == 100 and chain["writes_per_chain"] == 3
    assert_latencies(chain)
    for run in prop.values():
        assert run["arrived"] == run["sent"] == 100
        assert_latencies(run)
        assert 0 < run["machine_busy"] <= 1  # all CPUs, while sending
        assert run["cpu_us_per_update"]["nodes"] > 0 and run["cpu_us_per_update"]["redis"] > 0
        assert run["wait_us_per_update"]["nodes"] >= 0 and run["wait_us_per_update"]["redis"] >= 0
        assert isinstance(run["redis_stalls"], dict)  # what it holds: the test below
        # the load tool's own cost: it shares the cores with the herd it measures
        assert run["tool_cpu_us_per_update"] > 0 and 0 < run["tool_wakeups_per_update"] < 5
    for label in ("line", "line_light"):  # from the access logs (herd.tools.hops)
        stages = prop[label]["stages"]
        assert list(stages) == ["send->A", "A->B", "B", "B->C", "C", "C->D", "send->D"]
        assert all(0 < s["p50_ms"] <= s["p99_ms"] < 1000 for s in stages.values()), stages
    rec = report["results"]["reconcile"]
    assert rec["changed"] == 20 and 0 < rec["converge_s"] < 30
    assert 0 < report["results"]["memory"]["bytes_per_client"] < 10_000  # measured on A
    assert rec["full_dump_bytes"] > 2000 * 40 and rec["sync_bytes"] > 0
    assert any(s["direction"] == "A->B" and s["records"] >= 20 for s in rec["syncs"])
    starts = report["results"]["startup"]["seconds"]
    assert len(starts) == 5 and all(0 < t < 10 for t in starts)  # sane, not a timed target


def test_unknown_scenario_is_refused() -> None:
    result = subprocess.run([sys.executable, "-m", "herd.tools.bench", "--only", "speed"], cwd=REPO,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "unknown scenario(s) speed" in result.stderr


def test_arguments_hook_into_a_subparser() -> None:
    parser = argparse.ArgumentParser(prog="herd")
    sub = parser.add_subparsers(dest="command")
    bench.add_bench_arguments(sub.add_parser("bench"))
    args = parser.parse_args(["bench", "--only", "memory", "--clients", "1000"])
    assert (args.only, args.clients, args.seconds, args.connections, args.in_flight) == (
        "memory", 1000, 5.0, 8, 16)
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--clients", "10"])  # 1% of them must be at least one


@pytest.mark.parametrize("option, value", [
    ("--seconds", "nan"), ("--seconds", "inf"), ("--seconds", "0"), ("--rate", "-inf"),
    ("--connections", "100000"), ("--connections", "-1"), ("--only", ""), ("--only", "memory,,startup"),
    ("--rounds", "0"), ("--rounds", "21"),
])
def test_bad_options_are_one_line_and_status_2(option: str, value: str) -> None:
    """Found by an audit: nan and inf ended in a traceback after the herd had
    started; an empty --only ran nothing and exited 0."""
    result = subprocess.run([sys.executable, "-m", "herd", "bench", option, value], cwd=REPO,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1].startswith("herd bench: ") and "Traceback" not in result.stderr


def test_generated_requests_are_valid_iamats() -> None:
    now = time.time_ns()
    for index in (0, 1, 4095, 123456):
        line = iamat(b"bench", index, client_time(now)).rstrip(b"\n")
        request = parse_request(line, now, 3600 * 10**9)
        assert isinstance(request, Iamat) and request.time.ns == now
        assert request.client_id == b"bench%d" % index
        assert abs(Decimal(request.location.lat.decode())) <= GEO_LAT_LIMIT  # in Redis GEO's range


def test_percentile_and_table() -> None:
    assert percentile([], 0.5) == 0.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile(list(map(float, range(1, 101))), 0.99) == 99.0
    results = {"memory": {"clients": 10, "node": "x", "bytes_per_client": 250.0, "log_bytes_per_client": 22.0,
                          "geo_bytes_per_client": 100.0, "hash_bytes_per_client": 110.0}}
    rows = bench_report.figures(results)
    assert (rows[2].value, rows[2].target, rows[2].met) == ("1.19", "<= 1.2", True)  # SPEC 8: 250 / 210
    results["memory"]["bytes_per_client"] = 253.0
    assert bench_report.figures(results)[2].met is False
    report = {"date": "d", "commit": "c", "results": results,
              "machine": {"nproc": 2, "cpu": "x", "python": "3", "redis": "7", "twisted": "t"}}
    assert "bytes per client (10 clients, node x)" in bench_report.render_table(report, rows)


def test_propagation_target_follows_the_fsync_policy() -> None:
    """SPEC 8: three hops at 1000/s within 5 ms with everysec; with always,
    within the p99 of three fsync'd Redis writes in a row plus 2 ms."""
    line = {"from": "A", "to": "D", "hops": 3, "rate": 1000.0, "p50_ms": 2.0, "p99_ms": 4.0,
            "arrived": 10, "sent": 10}
    everysec = bench_report.propagation_figures({"line": line}, {})
    assert (everysec[0].target, everysec[0].met) == ("p99 <= 5 ms at 1000/s", True)
    chain = {"chains": 10, "writes_per_chain": 3, "rate": 1000.0, "p50_ms": 0.9, "p99_ms": 1.5}
    always = bench_report.propagation_figures({"line": line, "fsync_chain": chain}, {})
    assert (always[0].target, always[0].met) == ("p99 <= 3.50 ms", False)
    assert always[1].value == "0.90 / 1.50 ms (10 chains)"


def test_propagation_runs_report_the_load_they_put_on_the_machine() -> None:
    line = {"from": "A", "to": "D", "hops": 3, "rate": 1000.0, "p50_ms": 2.0, "p99_ms": 4.0,
            "arrived": 10, "sent": 10, "machine_busy": 0.944,
            "cpu_us_per_update": {"nodes": 1033.4, "redis": 570.0},
            "wait_us_per_update": {"nodes": 1124.0, "redis": 1700.2},
            "tool_cpu_us_per_update": 181.1, "tool_wakeups_per_update": 0.97}
    rows = bench_report.propagation_figures({"line": line}, {})
    assert [(row.name, row.value) for row in rows[1:]] == [
        ("A->D at 1000/s: load", "all CPUs 94% busy while sending; per update: CPU 1,033 us in nodes, "
         "570 us in Redis; waiting for a core 1,124 us and 1,700 us; the load tool 181 us, 0.97 wake-ups")]


SLOW_SCRIPT = """local t = redis.call('TIME')
local stop = tonumber(t[1]) * 1e6 + tonumber(t[2]) + tonumber(ARGV[1]) * 1000
repeat t = redis.call('TIME') until tonumber(t[1]) * 1e6 + tonumber(t[2]) >= stop"""


def test_propagation_runs_name_the_stalls_their_redis_recorded(tmp_path: Path) -> None:
    """A run's Redis events of STALL_MS or more (its latency monitor) are
    reported per node, counted from watch_redis_stalls on; shorter ones are not."""
    with RedisProcess(tmp_path / "redis").start() as redis:
        node = SimpleNamespace(name="C", redis=redis)
        redis.call("EVAL", SLOW_SCRIPT, "0", str(bench.STALL_MS + 15))  # before watching: not reported
        bench.watch_redis_stalls([node])  # type: ignore[list-item]
        assert bench.redis_stalls([node]) == {}  # type: ignore[list-item]
        redis.call("EVAL", SLOW_SCRIPT, "0", str(bench.STALL_MS // 2))
        assert bench.redis_stalls([node]) == {}  # type: ignore[list-item]
        redis.call("EVAL", SLOW_SCRIPT, "0", str(bench.STALL_MS + 5))
        stalls = bench.redis_stalls([node])  # type: ignore[list-item]
    assert list(stalls) == ["C"] and list(stalls["C"]) == ["command"]
    assert bench.STALL_MS + 5 <= stalls["C"]["command"] < bench.STALL_MS + 500
    line = {"from": "A", "to": "D", "hops": 3, "rate": 1000.0, "p50_ms": 2.0, "p99_ms": 4.0,
            "arrived": 10, "sent": 10,
            "redis_stalls": {"D": {"aof-write": 12, "aof-fsync-always": 212}, "A": {"aof-fsync-always": 30}},
            "stall_ms": bench.STALL_MS}
    rows = bench_report.propagation_figures({"line": line}, {})
    assert (rows[1].name, rows[1].value) == (
        f"A->D at 1000/s: Redis stalls of {bench.STALL_MS} ms or more",
        "A: aof-fsync-always 30 ms; D: aof-fsync-always 212 ms, aof-write 12 ms")


def test_floor_and_ratios_from_results() -> None:
    """The floor is per node (ceiling per request + Redis per record); the
    herd's CPU per update is divided by that many floors; targets: at most
    twice the floor, single node at least a third of the ceiling's rate."""
    load = {"p50_ms": 1.0, "p99_ms": 2.0, "errors": 0, "cpu_cores": {"node": 0.5}}
    results = {
        "throughput": {**load, "rate": 9000.0, "nodes": 3, "updates": 100,
                       "cpu_us_per_update": {"all": 120.0, "node": 40.0, "redis": 20.0, "peers": 40.0,
                                             "peers' redis": 20.0}},
        "single": {**load, "rate": 40000.0, "nodes": 1, "updates": 100,
                   "cpu_us_per_update": {"all": 45.0, "node": 30.0, "redis": 15.0}},
        "ceiling": {**load, "rate": 150000.0, "cpu_us_per_request": 6.0},
        "floor": {"records": 1000, "rate": 45000.0, "cpu_us_per_record": 14.0, "fsync": "always"},
    }
    rows = {(f.scenario, f.name): f for f in bench_report.figures(results)}
    alone = rows[("floor", "plain writes alone / ceiling (records/s / req/s)")]
    assert (alone.value, alone.target, alone.met) == ("45,000 / 150,000 = 0.300", "", None)
    assert bench_report.floor_per_node(results) == 20.0
    ratio = rows[("floor", "throughput: CPU per update / floor of 3 node(s)")]
    assert (ratio.value, ratio.met) == ("2.00", True)
    assert rows[("floor", "single: CPU per update / floor of 1 node(s)")].value == "2.25"
    single = rows[("single", "single node / ceiling (req/s)")]
    assert (single.value, single.met) == ("0.267", False)
    herd_wide = rows[("throughput", "CPU per durable update, 3 node(s) + Redis")]
    assert herd_wide.value.startswith("120.0 us (node 40.0")
    del results["floor"]
    assert not [f for f in bench_report.figures(results) if f.scenario == "floor"]
    assert bench_report.cpu_ratio(results, "throughput") is None


def test_rounds_report_the_median_round_and_every_rounds_ratios() -> None:
    load = {"p50_ms": 1.0, "p99_ms": 2.0, "errors": 0, "cpu_cores": {"node": 0.5}}

    def one_round(herd_cpu: float, single_rate: float) -> dict[str, Any]:
        return {"throughput": {**load, "rate": 9000.0, "nodes": 3, "updates": 100,
                               "cpu_us_per_update": {"all": herd_cpu}},
                "single": {**load, "rate": single_rate, "nodes": 1, "updates": 100,
                           "cpu_us_per_update": {"all": 45.0}},
                "ceiling": {**load, "rate": 150000.0, "cpu_us_per_request": 6.0},
                "floor": {"records": 1000, "cpu_us_per_record": 14.0, "fsync": "always"}}

    rounds = [one_round(150.0, 40000.0), one_round(90.0, 45000.0), one_round(120.0, 30000.0)]
    results = bench.pick_round(rounds)
    assert results["throughput"]["cpu_us_per_update"]["all"] == 120.0  # ratios 2.5, 1.5, 2.0: the median
    assert results["single"]["rate"] == 30000.0  # the same round's, whatever its single ratio
    assert results["rounds"] == [{"cpu_ratio": 2.5, "single_ratio": 0.267, "median": False},
                                 {"cpu_ratio": 1.5, "single_ratio": 0.3, "median": False},
                                 {"cpu_ratio": 2.0, "single_ratio": 0.2, "median": True}]
    rows = {(f.scenario, f.name): f.value for f in bench_report.figures(results)}
    assert rows[("floor", "throughput: CPU per update / floor, each round ([median round])")] == \
        "2.500, 1.500, [2.000]"
    assert rows[("single", "single node / ceiling, each round ([median round])")] == "0.267, 0.300, [0.200]"
    rounds[0]["floor"] = {"error": "redis-writes: no record was acknowledged"}
    assert bench.pick_round(rounds)["floor"] == rounds[0]["floor"]  # a failed round is not hidden


def test_each_round_runs_on_a_fresh_herd() -> None:
    # Found while adding rounds: a second round reused the first's Redis
    # data, so its node spent the round loading the clients already held.
    report, _ = run_bench("--only", "single", "--rounds", "2", "--seconds", "0.5")
    run = report["results"]["single"]  # with no ratio to rank by, the last round
    assert len(report["results"]["rounds"]) == 2 and report["settings"]["rounds"] == 2
    assert 0 < run["updates"] <= run["all_answered"] + 8 * 16, run


def resp_arrays(data: bytes) -> list[list[bytes]]:
    """RESP arrays of bulk strings (commands as a client sends them)."""
    out, lines = [], iter(data.split(b"\r\n"))
    for head in lines:
        if head:
            assert head.startswith(b"*")
            out.append([next(lines) for _ in range(int(head[1:])) if next(lines).startswith(b"$")])
    return out


def test_floor_writer_commands_store_the_client_schema() -> None:
    """redis-writes sends what a node stores: the seven client fields, and the
    GEO member, for a new client each time."""
    from herd.tools.bench_load import record_commands

    hset, geoadd = resp_arrays(record_commands(b"herd:", 7, b"1700000000.000000001"))
    fields = dict(zip(hset[2::2], hset[3::2], strict=True))
    assert hset[:2] == [b"HSET", b"herd:client:bench7"]
    assert set(fields) == {b"at", b"server", b"skew", b"location", b"lat", b"lon", b"time"}
    assert fields[b"location"] == fields[b"lat"] + fields[b"lon"]
    assert fields[b"at"].split() == [b"AT", b"Bailey", fields[b"skew"], b"bench7", fields[b"location"],
                                     b"1700000000.000000001"]
    assert geoadd == [b"GEOADD", b"herd:geo", fields[b"lon"], fields[b"lat"], b"bench7"]


def ptrace_allowed() -> bool:
    """Whether vgdb (callgrind_control) may attach to our children: root, or
    no Yama restriction (ptrace_scope 0 or no Yama)."""
    scope = Path("/proc/sys/kernel/yama/ptrace_scope")
    return os.geteuid() == 0 or not scope.exists() or scope.read_text().strip() == "0"


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
@pytest.mark.skipif(not ptrace_allowed(), reason="vgdb needs ptrace (root, or kernel.yama.ptrace_scope 0)")
@pytest.mark.timeout(420)  # 40 s here: four processes under valgrind, two of them starting Python
def test_instructions_are_counted_for_each_part() -> None:
    report, _ = run_bench("--only", "instructions", timeout=400)
    r = report["results"]["instructions"]
    per = {"node": r["node"]["per_iamat"], "redis": r["redis"]["per_record"],
           "ceiling": r["ceiling"]["per_request"], "floor": r["floor"]["per_record"]}
    assert all(5_000 < count < 1_000_000 for count in per.values()), per
    assert r["node"]["iamats"] == r["redis"]["records"] == r["rounds"] * r["lockstep"]
    # More than the ceiling and the floor: a node does what the ceiling does, and stores; its
    # Redis does what the floor's does, in a Lua function (measured: 1.58 and 1.36)
    assert per["node"] > per["ceiling"] and per["redis"] > per["floor"], per
    assert [f["figure"] for f in report["figures"]][-1] == "node + its Redis per update / floor of 1 node"


@pytest.mark.skipif(shutil.which("callgrind_control") is None, reason="valgrind is not installed")
def test_a_callgrind_control_that_found_nothing_is_an_error(tmp_path: Path) -> None:
    # Found by a review: callgrind_control exits 0 and says what failed on stdout.
    process = ChildProcess("a sleeper", ["sleep", "30"], tmp_path / "sleeper.log")
    with process:
        process.start()
        with pytest.raises(bench_instructions.InstructionsError, match="a sleeper: Error: .* not detected"):
            bench_instructions.counted([(process, tmp_path / "x.callgrind")], lambda: None)


def test_instructions_are_not_in_a_plain_run_and_need_valgrind(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser(prog="herd")
    bench.add_bench_arguments(parser.add_subparsers(dest="command").add_parser("bench"))
    assert "instructions" not in bench.selected(parser.parse_args(["bench"]).only)
    assert bench.selected("instructions") == ["instructions"]
    monkeypatch.setenv("PATH", str(tmp_path))  # no valgrind on it
    with pytest.raises(bench_instructions.InstructionsError, match="valgrind is not installed"):
        bench_instructions.run(tmp_path, "always")


def test_instructions_figures_are_the_ratios_of_the_counts() -> None:
    r = {"lockstep": 64, "rounds": 60, "node": {"per_iamat": 63_000}, "redis": {"per_record": 72_600},
         "ceiling": {"per_request": 40_000}, "floor": {"per_record": 53_600}}
    rows = {f.name: f.value for f in bench_report.instructions_figures(r, {})}
    assert rows == {
        "node per IAMAT / ceiling server per request (60 writes of 64, one at a time)":
            "63,000 / 40,000 = 1.57",
        "node's Redis per record / floor's plain writes per record": "72,600 / 53,600 = 1.35",
        "node + its Redis per update / floor of 1 node": "135,600 / 93,600 = 1.45"}
