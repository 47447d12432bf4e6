"""``herd bench``: the benchmark harness (SPEC section 8, Targets).

It runs its own herds on free loopback ports (``herd.tools.harness.LocalHerd``):
one real ``redis-server`` per node with the shipped durability (AOF,
``appendfsync always``) and every node as ``python -m herd serve NAME --config
<generated toml>``, all under a temporary directory that is removed at the end
(Ctrl-C included).
Load comes from ``herd.tools.bench_load`` in processes of its own. Scenarios:

- throughput: pipelined IAMAT req/s on one node that floods to 2 peers, and
  the CPU the three nodes and their Redis spend per durable update
- single: the same on one node with no peers
- ceiling: the same load against a no-storage Twisted line server
- floor: Redis CPU per record written with plain pipelined commands; with the
  ceiling's CPU per request, the floor of SPEC section 8, and the ratios
- propagation: IAMAT at a fixed rate, time until the farthest node stored it
- whatsat: offline-provider WHATSAT latency at 1, 20 and 50 km
- memory: Redis bytes per client
- reconcile: a node restarted after missing 1% of the clients' updates
- instructions (only when asked): the node's, its Redis's, the ceiling
  server's and the floor Redis's instructions per update, under callgrind

Prints a table, or with ``--json`` one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from herd.logs import FLUSH_INTERVAL
from herd.tools import bench_instructions
from herd.tools.bench_report import (
    DEFAULT_SCENARIOS,
    SCENARIOS,
    cpu_ratio,
    figures,
    floor_per_node,
    rate_ratio,
    render_table,
    throughput_ratio,
)
from herd.tools.harness import (
    ChildProcess,
    HarnessError,
    LocalHerd,
    LocalNode,
    RedisProcess,
    child_env,
    die_with_parent,
    free_port,
    silent_places,
    wait_until,
)
from herd.tools.hops import stage_summary
from herd.tools.resp import Resp
from storage.scripts import SCAN_RECORDS

REPO = Path(__file__).resolve().parents[2]
STARTS = 5  # startup: node restarts measured
# SPEC section 5: the shipped five-node topology (links are undirected).
FIVE = {"Bailey": ["Bona", "Campbell"], "Bona": ["Campbell", "Clark"], "Campbell": ["Jaquez"],
        "Clark": ["Jaquez"], "Jaquez": []}
LINE = {"A": ["B"], "B": ["C"], "C": ["D"], "D": []}
DENSE_CLIENT = "+34.0522-118.2437"  # Los Angeles
WHATSAT_RADII = ("1", "20", "50")
LIGHT_RATE = 100.0  # updates/s of the unloaded propagation run
STALL_MS = 10  # propagation: Redis events this long or longer are reported (its latency monitor)
START_TIMEOUT = 20.0  # seconds for a Redis or a node to come up
PLACES_KEY_ENV = "HERD_BENCH_PLACES_KEY"
SECRET = secrets.token_hex(16)  # the peer secret of every herd this run starts
STOP_GRACE = 3.0  # seconds a process of a finished scenario has to exit before SIGKILL


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``herd bench`` flags, on ``parser`` (the ``bench`` subparser)."""
    add = parser.add_argument
    seconds, count = at_least(float, 0.001, 3600), at_least(int, 1, 1000)
    add("--only", default=",".join(DEFAULT_SCENARIOS), metavar="A,B,...",
        help=f"scenarios to run, comma separated (default: all of {', '.join(DEFAULT_SCENARIOS)}; "
             "also: instructions, under valgrind)")
    add("--seconds", type=seconds, default=5.0, help="throughput and ceiling: measured seconds (default 5)")
    add("--connections", type=count, default=8, help="load connections (default 8)")
    add("--in-flight", type=count, default=16, help="requests outstanding per connection (default 16)")
    add("--rounds", type=at_least(int, 1, 20), default=1,
        help="throughput, single, ceiling and floor: rounds of each, interleaved; the figures are the "
             "median round's, and each round's ratios are listed (default 1)")
    add("--rate", type=at_least(float, 0.001, 1_000_000), default=1000.0,
        help="propagation: IAMATs per second (default 1000)")
    add("--propagation-seconds", type=seconds, default=3.0,
        help="propagation: seconds of sending per topology (default 3)")
    add("--whatsat-seconds", type=seconds, default=2.0,
        help="whatsat: seconds of sequential requests per radius (default 2)")
    add("--clients", type=at_least(int, 100, 10_000_000), default=100_000,
        help="memory and reconcile: clients stored (default 100000; at least 100)")
    add("--appendfsync", choices=("always", "everysec"), default="always",
        help="Redis fsync policy: always (strict, shipped) or everysec (ops/redis/redis-everysec.conf)")
    add("--json", action="store_true", help="print one JSON object instead of a table")
    add("--keep", action="store_true", help="keep the temporary directory (Redis data, node logs)")


def at_least(kind: Callable[[str], float], low: float, high: float) -> Callable[[str], Any]:
    """An argparse type: ``kind(text)``, refused outside ``low``..``high`` (and
    when not finite: nan, inf)."""
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value) or value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low:g}, got {text}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high:,.0f}, got {text}")
        return value

    return convert


# -- machine ------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    return {"nproc": len(os.sched_getaffinity(0)), "cpu": cpu_model(), "loadavg_1m": os.getloadavg()[0],
            "python": platform.python_version(), "redis": redis_version(),
            "twisted": package_version("twisted"), "kernel": platform.release()}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def redis_version() -> str:
    exe = shutil.which("redis-server")
    if exe is None:
        return "not installed"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout
    match = re.search(r"v=(\S+)", out)
    return match.group(1) if match else out.strip()


def package_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        return "unknown"
    commit = out.stdout.strip() or "unknown"
    return f"{commit}+dirty" if dirty else commit


# -- processes ------------------------------------------------------------------


class BenchError(Exception):
    """A scenario could not run (a load tool failed, a node refused its load).
    Processes that do not start raise HarnessError, waits that run out WaitTimeout."""


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (0.0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def context_switches(pid: int) -> int:
    """Voluntary (waits: reads, fsync) plus involuntary (preempted) context
    switches of a process so far (0 once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return sum(int(line.split()[1]) for line in status.splitlines()
               if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")))


def waited_ns(pid: int) -> int:
    """Nanoseconds a process's main thread has been ready to run but waited
    for a core, so far (0 once it is gone, or without schedstat)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0


class CpuMeter:
    """The CPU seconds groups of processes spend from its making on, their
    context switches: how often they woke up (or were preempted), so how much
    each did per read or batch (docs/BENCHMARKS.md), and how long they waited
    for a core."""

    def __init__(self, groups: dict[str, list[int]]):
        self._groups = groups
        self._before = self._now()
        self._switches_before = self._switches_now()
        self._waited_before = self._waited_now()

    def _now(self) -> dict[str, float]:
        return {k: sum(cpu_seconds(p) for p in pids) for k, pids in self._groups.items()}

    def _switches_now(self) -> dict[str, int]:
        return {k: sum(context_switches(p) for p in pids) for k, pids in self._groups.items()}

    def spent(self) -> dict[str, float]:
        """Per group, CPU seconds since the meter was made."""
        now = self._now()
        return {k: now[k] - self._before[k] for k in self._groups}

    def switches(self) -> dict[str, int]:
        """Per group, context switches since the meter was made."""
        now = self._switches_now()
        return {k: now[k] - self._switches_before[k] for k in self._groups}

    def _waited_now(self) -> dict[str, int]:
        return {k: sum(waited_ns(p) for p in pids) for k, pids in self._groups.items()}

    def waited(self) -> dict[str, float]:
        """Per group, seconds its main threads were ready to run but waited
        for a core since the meter was made."""
        now = self._waited_now()
        return {k: (now[k] - self._waited_before[k]) / 1e9 for k in self._groups}


def micros_each(seconds: float, count: int, digits: int = 2) -> float:
    """``seconds`` spread over ``count`` things, in microseconds (0.0 for none)."""
    return round(seconds / count * 1e6, digits) if count else 0.0


def clients_held(node: LocalNode) -> int:
    """The client count of the node's summary hash (store_batch.lua keeps it)."""
    return int(node.redis.call("HGET", "herd:summary", "clients") or 0)


def hops_from(herd: LocalHerd, source: str) -> dict[str, int]:
    hops, queue = {source: 0}, deque([source])
    while queue:
        here = queue.popleft()
        for peer in sorted(herd.neighbours(here)):
            if peer not in hops:
                hops[peer] = hops[here] + 1
                queue.append(peer)
    return hops


@contextmanager
def herd_running(bench: Bench, name: str, topology: dict[str, list[str]],
                 offline_places: bool = False) -> Iterator[LocalHerd]:
    """A started herd under ``<bench root>/name`` with every link up; everything
    stopped on exit."""
    # Scenarios that send no WHATSAT use a places provider that is never called.
    places = 'provider = "offline"' if offline_places else silent_places(PLACES_KEY_ENV)
    with LocalHerd(bench.root / name, topology, secret=SECRET, places=places, env={PLACES_KEY_ENV: "unused"},
                   appendfsync=bench.args.appendfsync, stop_grace=STOP_GRACE) as herd:
        herd.start()
        for node in herd.nodes.values():
            # A benchmark measures: the shipped config's maxmemory (a production
            # limit, sized for 1,000,000 clients) must not cut a large --clients short.
            node.redis.call("CONFIG", "SET", "maxmemory", "0")
        herd.wait_links(START_TIMEOUT)
        yield herd


def run_tool(command: str, args: Sequence[str], timeout: float) -> dict[str, Any]:
    """Run ``python -m herd.tools.bench_load COMMAND ARGS`` and return the JSON it
    prints (it is killed on a timeout or Ctrl-C)."""
    argv = [*die_with_parent(), sys.executable, "-m", "herd.tools.bench_load", command, *args]
    try:
        proc = subprocess.run(argv, env=child_env(), stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout, start_new_session=True)
    except subprocess.TimeoutExpired:
        raise BenchError(f"bench_load {command} did not finish within {timeout:g} s") from None
    if proc.returncode != 0 or not proc.stdout.strip():
        raise BenchError(f"bench_load {command} failed (exit {proc.returncode})")
    result: dict[str, Any] = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    return result


# -- the scenarios ----------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    root: Path
    memory: dict[str, Any] | None = None  # measured by the reconcile scenario when both run

    def load_args(self, port: int) -> list[str]:
        return [str(port), "--connections", str(self.args.connections),
                "--in-flight", str(self.args.in_flight)]

    def timed_load(self, port: int, watched: dict[str, list[int]]) -> dict[str, Any]:
        """Run the duration load against ``port``; add the CPU share (cores) of
        each group of ``watched`` processes over the run, and the CPU seconds
        each spent."""
        meter = CpuMeter(watched)
        started = time.monotonic()
        result = run_tool("load", [*self.load_args(port), "--seconds", str(self.args.seconds)],
                          self.args.seconds + 60)
        wall = time.monotonic() - started
        spent = meter.spent()
        result["cpu_cores"] = {k: round(v / wall, 2) for k, v in spent.items()}
        result["cpu_cores"]["loadgen"] = result.pop("loadgen_cpu")
        result["cpu_seconds"] = {k: round(v, 4) for k, v in spent.items()}
        return result

    def durable_load(self, herd: LocalHerd, source: str) -> dict[str, Any]:
        """The duration load against node ``source`` of ``herd``, and the CPU
        its nodes and their Redis spend per update (the load generator left
        out), counted until every node of the herd has stored every update the
        load made (each IAMAT names a new client: updates = clients held)."""
        nodes = list(herd.nodes.values())
        peers = [n for n in nodes if n.name != source]
        groups = {"node": [herd.nodes[source].pid], "redis": [herd.nodes[source].redis.pid]}
        if peers:
            groups |= {"peers": [n.pid for n in peers], "peers' redis": [n.redis.pid for n in peers]}
        meter = CpuMeter(groups)
        result = self.timed_load(herd.nodes[source].port, groups)
        updates = clients_held(herd.nodes[source])
        wait_until(lambda: all(clients_held(n) >= updates for n in peers), 120,
                   "every node to store every update", every=0.02)
        spent, switches = meter.spent(), meter.switches()
        result["nodes"] = len(nodes)
        result["updates"] = updates
        result["cpu_us_per_update"] = {k: micros_each(v, updates, 1)
                                       for k, v in {"all": sum(spent.values()), **spent}.items()}
        result["switches_per_update"] = {k: round(v / updates, 4) if updates else 0.0
                                         for k, v in {"all": sum(switches.values()), **switches}.items()}
        return result

    def store_clients(self, port: int, count: int, prefix: str, step: int = 1) -> dict[str, Any]:
        """IAMAT clients ``<prefix>0``, ``<prefix><step>``, ... (count of them) through
        the node at ``port``, pipelined; the load tool's result."""
        result = run_tool("load", [*self.load_args(port), "--count", str(count), "--prefix", prefix,
                                   "--step", str(step)], 600)
        if result["errors"] or result["requests"] != count:
            raise BenchError(f"storing {count} clients: {result['errors']} answered '? <line>' "
                             f"(see the node's log), {result['requests']} answered in all")
        return result


def scenario_throughput(bench: Bench) -> dict[str, Any]:
    """IAMAT/s on Bailey, which floods every update to its 2 linked peers;
    herd-wide CPU per durable update."""
    topology = {"Bailey": ["Bona", "Campbell"], "Bona": [], "Campbell": []}
    with herd_running(bench, "throughput", topology) as herd:
        result = bench.durable_load(herd, "Bailey")
        result["peers"] = 2
        return result


def scenario_single(bench: Bench) -> dict[str, Any]:
    """IAMAT/s on one node with no peers (SPEC section 8: durable throughput
    on one node against the ceiling)."""
    with herd_running(bench, "single", {"Bailey": []}) as herd:
        return bench.durable_load(herd, "Bailey")


def scenario_ceiling(bench: Bench) -> dict[str, Any]:
    """The same load against a no-storage Twisted line server (herd.wire.client
    only); its CPU per request is the node's half of the floor."""
    port = free_port()
    argv = [sys.executable, "-m", "herd.tools.bench_load", "ceiling-server", str(port)]
    with ChildProcess("ceiling server", argv, bench.root / "ceiling" / "ceiling.log", port=port) as server:
        server.start(timeout=START_TIMEOUT)
        result = bench.timed_load(port, {"server": [server.pid]})
        result["cpu_us_per_request"] = micros_each(result["cpu_seconds"]["server"], result["all_answered"])
        return result


def scenario_floor(bench: Bench) -> dict[str, Any]:
    """The storage half of the floor: what a Redis with the shipped config and
    ``--appendfsync`` spends per client record written with plain pipelined
    commands (HSET of the seven client fields, GEOADD of the position), C
    connections with W records outstanding each, as the load has requests."""
    redis = RedisProcess(bench.root / "floor" / "redis", appendfsync=bench.args.appendfsync, snapshots=False,
                         label="the floor's redis-server")
    with redis:
        redis.start(timeout=START_TIMEOUT)
        meter = CpuMeter({"redis": [redis.pid]})
        args = [str(redis.port), "--connections", str(bench.args.connections),
                "--in-flight", str(bench.args.in_flight), "--seconds", str(bench.args.seconds)]
        result = run_tool("redis-writes", args, bench.args.seconds + 60)
        spent = meter.spent()["redis"]
        if not result["records"]:
            raise BenchError("redis-writes: no record was acknowledged")
        result["cpu_us_per_record"] = micros_each(spent, result["records"])
        result["fsync"] = bench.args.appendfsync
        return result


def scenario_propagation(bench: Bench) -> dict[str, Any]:
    """Send-to-stored latency at the farthest node: the five-node herd (its
    farthest node is 2 hops from Bailey) and a line A-B-C-D (3 hops), at
    ``--rate``; and the line once more at a light 100/s, for the unloaded floor.
    With ``appendfsync always``, also SPEC section 8's reference for it: three
    fsync'd Redis writes in a row on the same disk (``fsync_chain``)."""
    out: dict[str, Any] = {}
    seconds = bench.args.propagation_seconds
    for label, topology, source in (("five", FIVE, "Bailey"), ("line", LINE, "A")):
        with herd_running(bench, f"propagation-{label}", topology) as herd:
            out[label] = propagate(herd, source, bench.args.rate, seconds, "prop")
            if label == "line":
                out["line_light"] = propagate(herd, source, LIGHT_RATE, max(1.0, seconds / 3), "light")
                time.sleep(2 * FLUSH_INTERVAL)  # the nodes' access logs are written
                logs = {name: herd.nodes[name].access_log() for name in LINE}
                for run, prefix in ((out["line"], "prop"), (out["line_light"], "light")):
                    run["stages"] = stage_summary(logs, list(LINE), prefix)
    if bench.args.appendfsync == "always":
        out["fsync_chain"] = fsync_chain(bench, bench.args.rate, seconds)
    return out


def fsync_chain(bench: Bench, rate: float, seconds: float) -> dict[str, Any]:
    """Three Redis with ``appendfsync always`` under the bench's directory (one
    disk), and a client record written to each in turn at ``rate``: the
    latency of each chain of three writes (bench_load redis-chain)."""
    with ExitStack() as stack:
        servers = []
        for i in range(1, 4):
            redis = stack.enter_context(RedisProcess(
                bench.root / "fsync-chain" / f"redis-{i}", appendfsync="always", snapshots=False,
                label=f"the fsync chain's redis-server {i}"))
            redis.start(timeout=START_TIMEOUT)
            servers.append(redis)
        args = [*(str(redis.port) for redis in servers), "--rate", str(rate), "--seconds", str(seconds)]
        return run_tool("redis-chain", args, seconds + 60)


def propagate(herd: LocalHerd, source: str, rate: float, seconds: float, prefix: str) -> dict[str, Any]:
    hops = hops_from(herd, source)
    far = max(sorted(hops, reverse=True), key=lambda n: hops[n])  # five: Jaquez (Clark is 2 hops too)
    args = [str(herd.nodes[source].port), str(herd.nodes[far].redis.port), "--rate", str(rate),
            "--seconds", str(seconds), "--prefix", prefix]
    nodes = list(herd.nodes.values())
    watch_redis_stalls(nodes)
    meter = CpuMeter({"nodes": [n.pid for n in nodes], "redis": [n.redis.pid for n in nodes]})
    result = run_tool("propagate", args, seconds + 60)
    # What the herd's processes cost and waited for: at such rates a wake-up
    # per update and process, on shared cores (docs/BENCHMARKS.md, eleventh session).
    cpu = {k: micros_each(v, result["sent"], 1) for k, v in meter.spent().items()}
    waited = {k: micros_each(v, result["sent"], 1) for k, v in meter.waited().items()}
    return {"from": source, "to": far, "hops": hops[far], **result,
            "cpu_us_per_update": cpu, "wait_us_per_update": waited, "redis_stalls": redis_stalls(nodes),
            "stall_ms": STALL_MS}


def watch_redis_stalls(nodes: Sequence[LocalNode]) -> None:
    """Have each node's Redis record what took it STALL_MS or longer (its
    latency monitor: an fsync, a write to its AOF, a command), from now on."""
    for node in nodes:
        node.redis.call("CONFIG", "SET", "latency-monitor-threshold", str(STALL_MS))
        node.redis.call("LATENCY", "RESET")


def redis_stalls(nodes: Sequence[LocalNode]) -> dict[str, dict[str, int]]:
    """Per node, the longest stall of each kind its Redis recorded since
    watch_redis_stalls, in ms (LATENCY LATEST: event, time, latest, max)."""
    out: dict[str, dict[str, int]] = {}
    for node in nodes:
        latest = node.redis.call("LATENCY", "LATEST")
        events = {event.decode(): int(longest) for event, _, _, longest in latest}
        if events:
            out[node.name] = events
    return out


def scenario_whatsat(bench: Bench) -> dict[str, Any]:
    """Sequential WHATSAT latency, offline provider, a client in Los Angeles."""
    with herd_running(bench, "whatsat", {"Bailey": []}, offline_places=True) as herd:
        node = herd.nodes["Bailey"]
        started = time.monotonic()
        wait_until(lambda: node.redis.call("EXISTS", "herd:places:version") == 1, 120,
                   "the offline places data set to load", every=0.05)
        out: dict[str, Any] = {"places_loaded_s": round(time.monotonic() - started, 2)}
        with socket.create_connection(("127.0.0.1", node.port), timeout=10) as sock:
            when = f"{time.time():.9f}"
            sock.sendall(f"IAMAT bench-la {DENSE_CLIENT} {when}\n".encode())
            if not read_reply_line(sock).startswith(b"AT "):
                raise BenchError("the WHATSAT client's IAMAT was refused")
            for radius in WHATSAT_RADII:
                out[f"{radius}km"] = time_whatsat(sock, radius, bench.args.whatsat_seconds)
        return out


def read_reply_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            raise BenchError("the node closed the connection")
        data += chunk
    return data


def time_whatsat(sock: socket.socket, radius: str, seconds: float) -> dict[str, Any]:
    """Sequential ``WHATSAT bench-la <radius> 20`` for ``seconds`` (after 10 unmeasured)."""
    from herd.tools.bench_load import latency_summary

    request = f"WHATSAT bench-la {radius} 20\n".encode()
    latencies: list[int] = []
    results = 0
    deadline = time.monotonic() + seconds
    for i in range(1 << 62):
        start = time.perf_counter_ns()
        sock.sendall(request)
        reply = read_whatsat(sock)
        if i >= 10:
            latencies.append(time.perf_counter_ns() - start)
        if time.monotonic() > deadline and i >= 20:
            results = reply.count(b'"place_id"')
            break
    return {"requests": len(latencies), "results": results, **latency_summary(latencies)}


def read_whatsat(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n\n"):
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise BenchError("the node closed the connection")
        data += chunk
        if data.startswith(b"?") and data.endswith(b"\n"):
            raise BenchError(f"WHATSAT refused: {data[:200]!r}")
    return data


def scenario_memory(bench: Bench) -> dict[str, Any]:
    """Redis used_memory per client after storing N clients through one node
    (measured on node A of the reconcile scenario instead when that runs too)."""
    if bench.memory is not None:
        return bench.memory
    with herd_running(bench, "memory", {"Bailey": []}) as herd:
        node = herd.nodes["Bailey"]
        before = memory_marks(node)
        stored = bench.store_clients(node.port, bench.args.clients, "mem")
        return memory_result(node, before, bench.args.clients, "mem", stored["rate"])


class MemoryMarks(NamedTuple):
    """Memory of a node and its Redis at one moment (bytes)."""

    used_memory: int  # Redis's own count, what maxmemory limits
    redis_rss: int  # the redis-server process's resident set, what MemoryMax= limits
    node_rss: int  # the node process's resident set


def memory_marks(node: LocalNode) -> MemoryMarks:
    info = node.redis.info("memory")
    return MemoryMarks(int(info["used_memory"]), int(info["used_memory_rss"]), resident_bytes(node.pid))


def resident_bytes(pid: int) -> int:
    """VmRSS of process ``pid`` (0 once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0)


def memory_result(node: LocalNode, before: MemoryMarks, n: int, prefix: str, rate: float) -> dict[str, Any]:
    """Bytes per client in ``node``'s Redis since ``before`` (used_memory), after
    storing clients ``<prefix>0`` .. ``<prefix><n-1>``, with the journal (update log), the
    GEO set and the client hashes (sampled) apart; and the growth of the Redis
    and node processes' resident sets per client (docs/OPERATIONS.md sizes
    maxmemory and MemoryMax= from these)."""
    after = memory_marks(node)
    total = after.used_memory - before.used_memory
    with Resp(node.redis.port) as r:
        log, geo = r.pipeline([("MEMORY", "USAGE", "herd:journal"), ("MEMORY", "USAGE", "herd:geo")])
        sample = range(0, n, max(1, n // 100))
        hashes = r.pipeline([("MEMORY", "USAGE", f"herd:client:{prefix}{i}") for i in sample])
    return {"clients": n, "node": node.name, "store_rate": rate, "used_memory_delta": total,
            "bytes_per_client": round(total / n, 1),
            "redis_rss_bytes_per_client": round((after.redis_rss - before.redis_rss) / n, 1),
            "node_rss_bytes_per_client": round((after.node_rss - before.node_rss) / n, 1),
            "node_rss_bytes": after.node_rss,
            "log_bytes_per_client": round((log or 0) / n, 1), "geo_bytes_per_client": round(geo / n, 1),
            "hash_bytes_per_client": round(sum(h or 0 for h in hashes) / len(hashes), 1),
            "bytes_per_client_without_log": round((total - (log or 0)) / n, 1)}


# -- reconcile ---------------------------------------------------------------------

SYNC_LINE = re.compile(r"^(\S+) \[\S+\] \w+: sync to (\S+): (\w+), (\d+) records, (\d+) bytes in ([\d.]+) ms",
                       re.MULTILINE)


@dataclass(frozen=True)
class SyncLine:
    """One ``sync to <peer>`` line a node logged: a SYNC it answered."""

    direction: str  # "A->B": A sent to B
    at: float  # POSIX time the answer was complete
    mode: str
    records: int
    bytes: int
    ms: float

    def as_json(self, since: float) -> dict[str, Any]:
        return {"direction": self.direction, "mode": self.mode, "records": self.records,
                "bytes": self.bytes, "ms": self.ms, "done_after_restart_s": round(self.at - since, 3)}


def sync_lines(node: LocalNode, since: int, to: str) -> list[SyncLine]:
    return [SyncLine(f"{node.name}->{m[1]}", datetime.fromisoformat(m[0]).timestamp(), m[2], int(m[3]),
                     int(m[4]), float(m[5]))
            for m in SYNC_LINE.findall(node.log(since)) if m[1] == to]


def scenario_reconcile(bench: Bench) -> dict[str, Any]:
    """A-B hold N clients; B is killed, 1% of the clients are updated through A,
    B restarts: seconds until both agree, and the bytes reconciliation sent."""
    n = bench.args.clients
    with herd_running(bench, "reconcile", {"A": ["B"], "B": []}) as herd:
        a, b = herd.nodes["A"], herd.nodes["B"]
        before = memory_marks(a)
        load = bench.store_clients(a.port, n, "rc")
        bench.memory = memory_result(a, before, n, "rc", load["rate"])
        missing = wait_settled(b, n)
        b.kill()
        step = 100
        changed = [f"herd:client:rc{i}" for i in range(0, n, step)]
        bench.store_clients(a.port, len(changed), "rc", step=step)
        expected = hget_at(a.redis.port, changed)
        marks = (a.log_size(), b.log_size())
        restarted, restarted_wall = time.monotonic(), time.time()
        b.start(wait=False)
        wait_until(lambda: hget_at(b.redis.port, changed) == expected, 120, "B to get the updates", 0.005)
        converged = time.monotonic() - restarted
        records = wait_identical(a.redis.port, b.redis.port)
        syncs = wait_syncs(lambda: sync_lines(a, marks[0], "B") + sync_lines(b, marks[1], "A"))
        return {"clients": n, "changed": len(changed), "store_rate": load["rate"],
                "missing_on_B_before_kill": missing,
                "converge_s": round(converged, 3),
                "confirmed_identical_s": round(time.monotonic() - restarted, 3),
                "syncs_done_s": round(max((s.at for s in syncs), default=restarted_wall) - restarted_wall, 3),
                **byte_figures(records, syncs),
                "syncs": [s.as_json(restarted_wall) for s in syncs]}


def wait_settled(node: LocalNode, n: int, quiet: float = 5.0) -> int:
    """Wait until ``node`` holds ``n`` clients, or its count has not moved for
    ``quiet`` seconds (flooded updates it failed to store); how many it misses."""
    last, since = -1, time.monotonic()
    while True:
        count = int(node.redis.call("ZCARD", "herd:geo"))
        if count >= n or time.monotonic() - since > quiet:
            return n - count
        if count != last:
            last, since = count, time.monotonic()
        time.sleep(0.05)


def hget_at(port: int, keys: Sequence[str]) -> list[Any]:
    with Resp(port) as r:
        return r.pipeline([("HGET", k, "at") for k in keys])


def all_records(port: int) -> dict[bytes, bytes]:
    """Every client's AT line in a node's Redis, by client id."""
    records: dict[bytes, bytes] = {}
    cursor: bytes = b"0"
    with Resp(port) as r:
        while True:
            reply = r.call("EVAL", SCAN_RECORDS, 0, cursor, "herd:client:*", 5000)
            cursor = reply[0]
            for at in reply[1:]:
                records[at.split()[3]] = at
            if cursor == b"0":
                return records


def wait_identical(port_a: int, port_b: int, timeout: float = 60.0) -> dict[bytes, bytes]:
    """Wait until both Redis hold exactly the same records; those records."""
    deadline = time.monotonic() + timeout
    while True:
        mine, theirs = all_records(port_a), all_records(port_b)
        if mine == theirs:
            return mine
        if time.monotonic() > deadline:
            differ = len(set(mine.items()) ^ set(theirs.items()))
            raise BenchError(f"reconcile: nodes still differ after {timeout:g} s ({differ} records)")
        time.sleep(0.1)


def wait_syncs(found: Callable[[], list[SyncLine]], timeout: float = 30.0) -> list[SyncLine]:
    """The SYNC answers logged after the restart, once there is one each way
    (or after ``timeout``: then whatever was logged)."""
    try:
        wait_until(lambda: len({s.direction for s in found()}) == 2, timeout, "sync log lines", 0.1)
    except TimeoutError:
        pass
    return found()


def byte_figures(records: dict[bytes, bytes], syncs: Sequence[SyncLine]) -> dict[str, Any]:
    """Reconciliation bytes against a full dump (every record as ``R <AT line>\\n``)."""
    full_dump = sum(len(at) + 3 for at in records.values())
    sent = sum(s.bytes for s in syncs)
    return {"sync_bytes": sent, "full_dump_bytes": full_dump,
            "bytes_ratio": round(sent / full_dump, 4) if full_dump else 0.0}


def scenario_startup(bench: Bench) -> dict[str, Any]:
    """Seconds from spawning ``herd serve`` until it answers an IAMAT with an AT
    line (its Redis already running), over STARTS restarts."""
    with herd_running(bench, "startup", {"Bailey": []}) as herd:
        node = herd.nodes["Bailey"]
        times = []
        for _ in range(STARTS):
            node.kill()
            started = time.monotonic()
            node.start(wait=False)
            while not answers_iamat(node.port, f"IAMAT startup +1+1 {time.time():.9f}"):
                if time.monotonic() - started > START_TIMEOUT:
                    raise BenchError("the node did not answer within the start timeout")
                time.sleep(0.002)
            times.append(time.monotonic() - started)
        return {"seconds": [round(t, 3) for t in times]}


def answers_iamat(port: int, line: str) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(line.encode() + b"\n")
            return read_reply_line(sock).startswith(b"AT ")
    except OSError:
        return False


def scenario_instructions(bench: Bench) -> dict[str, Any]:
    """Instructions per update of the node, its Redis, the ceiling server and
    the floor's Redis, under callgrind (herd/tools/bench_instructions.py)."""
    try:
        return bench_instructions.run(bench.root / "instructions", bench.args.appendfsync)
    except bench_instructions.InstructionsError as err:
        raise BenchError(str(err)) from None


RUNNERS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "throughput": scenario_throughput, "single": scenario_single, "ceiling": scenario_ceiling,
    "floor": scenario_floor,
    "propagation": scenario_propagation, "whatsat": scenario_whatsat,
    "memory": scenario_memory, "reconcile": scenario_reconcile, "startup": scenario_startup,
    "instructions": scenario_instructions,
}


# -- entry points -------------------------------------------------------------------


def selected(only: str) -> list[str]:
    names = [n.strip() for n in only.split(",")]
    if not all(names):
        raise BenchError(f"--only {only!r}: an empty scenario name (known: {', '.join(SCENARIOS)})")
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise BenchError(f"unknown scenario(s) {', '.join(unknown)} (known: {', '.join(SCENARIOS)})")
    return [n for n in SCENARIOS if n in names]


RATIO_SCENARIOS = ("throughput", "single", "ceiling", "floor")  # run in rounds (--rounds)


def run_scenarios(bench: Bench, names: Sequence[str]) -> dict[str, Any]:
    """Run ``names`` in order, those of RATIO_SCENARIOS in ``--rounds`` rounds
    (see pick_round); but reconcile before memory, which then takes its
    figures from the reconcile herd instead of storing N clients once more."""
    ratio_names = [n for n in names if n in RATIO_SCENARIOS]
    if bench.args.rounds == 1:
        results = run_each(bench, ratio_names)
    else:  # each round in a directory of its own: no Redis data left from the one before
        results = pick_round([run_each(replace(bench, root=bench.root / f"round-{i}"), ratio_names)
                              for i in range(1, bench.args.rounds + 1)])
    others = [n for n in names if n not in RATIO_SCENARIOS]
    if "memory" in others and "reconcile" in others:
        others.remove("reconcile")
        others.insert(others.index("memory"), "reconcile")
    return results | run_each(bench, others)


def run_each(bench: Bench, names: Sequence[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in names:
        if not bench.args.json:
            print(f"herd bench: running {name} ...", file=sys.stderr, flush=True)
        try:
            results[name] = RUNNERS[name](bench)
        except (BenchError, HarnessError) as err:
            results[name] = {"error": str(err)}
    return results


def pick_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The results of the median round, by the herd-wide CPU ratio (else the
    single node's), with each round's ratios under ``rounds`` when there were
    several; a scenario that failed in any round is reported failed."""
    keyed = sorted((key, i) for i, key in enumerate(map(_round_key, rounds)) if key is not None)
    median = keyed[(len(keyed) - 1) // 2][1] if keyed else len(rounds) - 1
    results = dict(rounds[median])
    for each in rounds:
        results |= {name: r for name, r in each.items() if "error" in r}
    results["rounds"] = [{"cpu_ratio": _rounded(cpu_ratio(each, "throughput")),
                          "single_ratio": _rounded(rate_ratio(each, "single")),
                          "median": i == median} for i, each in enumerate(rounds)]
    return results


def _round_key(results: dict[str, Any]) -> float | None:
    ratio = cpu_ratio(results, "throughput")
    return ratio if ratio is not None else rate_ratio(results, "single")


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def run_bench(args: argparse.Namespace) -> int:
    """``herd bench``: run the selected scenarios; 0 when every one ran (targets
    missed or not), 1 when a scenario failed, 2 on bad arguments."""
    try:
        names = selected(args.only)
    except BenchError as err:
        print(f"herd bench: {err}", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="herd-bench-"))
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        # Before the run: the load average says how quiet the machine was, and
        # the commit is the code that ran (others may commit meanwhile).
        machine, commit = machine_info(), git_commit()
        report = make_report(args, machine, commit, run_scenarios(Bench(args, root), names))
    finally:
        signal.signal(signal.SIGTERM, previous)
        if args.keep:
            print(f"herd bench: kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    rows = figures(report["results"])
    report["figures"] = [f.as_json() for f in rows]
    print(json.dumps(report, indent=2) if args.json else render_table(report, rows))
    return 1 if any("error" in r for r in report["results"].values() if isinstance(r, dict)) else 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def make_report(args: argparse.Namespace, machine: dict[str, Any], commit: str,
                results: dict[str, Any]) -> dict[str, Any]:
    settings = {k: getattr(args, k) for k in ("seconds", "connections", "in_flight", "rounds", "rate",
                                                "propagation_seconds", "whatsat_seconds", "clients",
                                                "appendfsync")}
    report: dict[str, Any] = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                              "commit": commit, "machine": machine,
                              "settings": settings, "results": results}
    ratios = {"throughput_ratio": throughput_ratio(results), "single_ratio": rate_ratio(results, "single"),
              "cpu_ratio": cpu_ratio(results, "throughput"), "single_cpu_ratio": cpu_ratio(results, "single"),
              "floor_rate_ratio": rate_ratio(results, "floor")}
    report |= {k: round(v, 3) for k, v in ratios.items() if v is not None}
    floor = floor_per_node(results)
    if floor is not None:
        report["floor_us_per_node"] = round(floor, 2)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m herd.tools.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_arguments(parser)
    try:
        return run_bench(parser.parse_args(argv))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
