"""``herd bench``: a short real run of every scenario (real redis-servers and
nodes, the real load generator) must finish quickly and report sane numbers.
The figures are not checked against the SPEC targets here; docs/BENCHMARKS.md
has those."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

import pytest
from harness import REPO

from herd.tools import bench
from herd.tools.bench_load import client_time, iamat, percentile
from herd.wire.client import Iamat, parse_request


def run_bench(*flags: str) -> tuple[dict[str, Any], float]:
    """``python -m herd.tools.bench FLAGS --json``: the report and the seconds it took."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "herd.tools.bench", *flags, "--json"], cwd=REPO,
                            capture_output=True, text=True, timeout=110)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout), elapsed


def assert_latencies(run: dict[str, Any]) -> None:
    assert 0 < run["p50_ms"] <= run["p99_ms"] <= run["max_ms"], run


def test_short_run_of_load_whatsat_and_memory() -> None:
    report, elapsed = run_bench("--only", "throughput,ceiling,whatsat,memory", "--seconds", "1",
                                "--whatsat-seconds", "0.5", "--clients", "2000")
    assert elapsed < 90
    assert report["machine"]["nproc"] >= 1 and report["commit"]
    results = report["results"]
    for name in ("throughput", "ceiling"):
        run = results[name]
        assert run["rate"] > 0 and run["errors"] == 0, run
        assert_latencies(run)
    assert 0 < report["throughput_ratio"] < 10
    for radius in ("1km", "20km", "50km"):
        assert_latencies(results["whatsat"][radius])
    assert results["whatsat"]["50km"]["results"] == 20
    assert 0 < results["memory"]["bytes_per_client"] < 10_000
    assert {f["scenario"] for f in report["figures"]} == {"throughput", "ceiling", "whatsat", "memory"}


def test_short_run_of_propagation_and_reconcile() -> None:
    report, elapsed = run_bench("--only", "propagation,memory,reconcile,startup", "--clients", "2000",
                                "--propagation-seconds", "0.5", "--rate", "200")
    assert elapsed < 90
    prop = report["results"]["propagation"]
    assert (prop["five"]["to"], prop["five"]["hops"]) == ("Jaquez", 2)
    assert (prop["line"]["to"], prop["line"]["hops"]) == ("D", 3)
    assert prop["line_light"]["rate"] == 100
    for run in prop.values():
        assert run["arrived"] == run["sent"] == 100
        assert_latencies(run)
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
        assert request.client_id == b"bench%d" % index and request.location.in_geo_range


def test_percentile_and_table() -> None:
    assert percentile([], 0.5) == 0.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile(list(map(float, range(1, 101))), 0.99) == 99.0
    results = {"memory": {"clients": 10, "node": "x", "bytes_per_client": 250.0, "log_bytes_per_client": 1.0,
                          "geo_bytes_per_client": 2.0, "hash_bytes_per_client": 3.0}}
    rows = bench.figures(results)
    assert rows[0].met is True and rows[0].target == "<= 300"
    report = {"date": "d", "commit": "c", "results": results,
              "machine": {"nproc": 2, "cpu": "x", "python": "3", "redis": "7", "twisted": "t"}}
    assert "bytes per client (10 clients, node x)" in bench.render_table(report, rows)
