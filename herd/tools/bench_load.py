"""The load side of ``herd bench``, run in processes of its own so that the
generator never shares an interpreter with what it measures:

    python -m herd.tools.bench_load load PORT [--connections C] [--in-flight W]
                                        (--seconds S [--warmup S] | --count N [--first I] [--step K])
    python -m herd.tools.bench_load propagate PORT REDIS_PORT --rate R --seconds S
    python -m herd.tools.bench_load redis-writes REDIS_PORT [--connections C] [--in-flight W] [--seconds S]
    python -m herd.tools.bench_load redis-chain REDIS_PORT... --rate R --seconds S
    python -m herd.tools.bench_load ceiling-server PORT

``load``, ``propagate``, ``redis-writes`` and ``redis-chain`` print one JSON
object on stdout.
``redis-writes`` is the storage half of the CPU floor (SPEC section 8): plain
pipelined writes of the records a node stores (HSET of the seven client
fields, GEOADD of the position), W records outstanding per connection. ``ceiling-server``
runs a no-storage Twisted line server that answers IAMAT exactly as a node
does (``herd.wire.client``), without Redis or peers, until SIGTERM.
``redis-chain`` times a record written to each of several Redis in turn:
with three, SPEC section 8's reference for propagation under ``appendfsync
always`` (three fsync'd writes on the same disk).

The generator pipelines: each connection keeps W requests outstanding, and a
reply (one line per IAMAT, counted by newlines) lets the next request go.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import resource
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000
# Client positions the generator cycles through: all inside Redis GEO's band.
LOCATIONS = [b"%+.6f%+.6f" % ((i * 37) % 16000 / 100 - 80, (i * 91) % 35000 / 100 - 175)
             for i in range(4096)]


def client_time(ns: int) -> bytes:
    """POSIX seconds with 9 fractional digits, as a client would send them."""
    return b"%d.%09d" % divmod(ns, NS_PER_S)


def iamat(prefix: bytes, index: int, when: bytes) -> bytes:
    return b"IAMAT %s%d %s %s\n" % (prefix, index, LOCATIONS[index % len(LOCATIONS)], when)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of ``values`` (0.0 when empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


def latency_summary(latencies_ns: Sequence[int]) -> dict[str, float]:
    ms = [x / NS_PER_MS for x in latencies_ns]
    return {"p50_ms": round(percentile(ms, 0.50), 3), "p99_ms": round(percentile(ms, 0.99), 3),
            "max_ms": round(max(ms, default=0.0), 3)}


# -- load: pipelined IAMAT over several connections -------------------------


@dataclass
class Window:
    """What one load run counts: replies inside [start, end) and their latencies."""

    start: int  # perf_counter_ns
    end: int
    replies: int = 0
    errors: int = 0
    latencies: list[int] = field(default_factory=list)
    all_replies: int = 0  # in the whole run, warm-up and tail included
    all_errors: int = 0

    def record(self, now: int, sent_at: list[int], errors: int) -> None:
        """Replies to the requests sent at ``sent_at`` arrived at ``now``; ``errors``
        of them were ``? <line>``."""
        self.all_replies += len(sent_at)
        self.all_errors += errors
        if self.start <= now < self.end:
            self.replies += len(sent_at)
            self.errors += errors
            self.latencies.extend(now - t for t in sent_at if t >= self.start)


class LoadConnection(asyncio.Protocol):
    """One pipelined client connection: keeps ``in_flight`` requests outstanding."""

    def __init__(self, indexes: Iterator[int], prefix: bytes, in_flight: int, window: Window,
                 bounded: bool, done: asyncio.Future[None]):
        self._indexes = indexes
        self._prefix = prefix
        self._in_flight = in_flight
        self._window = window
        self._bounded = bounded  # True: send every index once; False: until the window ends
        self._done = done
        self._sent: deque[int] = deque()
        self._line_start = True
        self._exhausted = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._send(self._in_flight)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        count = data.count(b"\n")
        sent = self._sent
        self._window.record(now, [sent.popleft() for _ in range(min(count, len(sent)))],
                            self._count_errors(data))
        if self._bounded or now < self._window.end:
            self._send(count)
        else:
            self._exhausted = True
        if self._exhausted and not sent:
            self._finish()

    def _count_errors(self, data: bytes) -> int:
        """Replies in ``data`` that are ``? <line>``: a ``?`` at the start of a line."""
        errors = data.count(b"\n?")
        if self._line_start and data.startswith(b"?"):
            errors += 1
        self._line_start = data.endswith(b"\n")
        return errors

    def _send(self, n: int) -> None:
        if self._exhausted or n <= 0:
            return
        now, when = time.perf_counter_ns(), client_time(time.time_ns())
        lines = []
        for index in self._indexes:
            lines.append(iamat(self._prefix, index, when))
            if len(lines) == n:
                break
        else:
            self._exhausted = True
        if lines:
            self._sent.extend([now] * len(lines))
            assert self.transport is not None
            self.transport.write(b"".join(lines))
        elif not self._sent:
            self._finish()

    def _finish(self) -> None:
        if not self._done.done():
            self._done.set_result(None)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._done.set_exception(ConnectionError(f"connection lost: {exc}"))


@dataclass(frozen=True)
class LoadPlan:
    port: int
    connections: int
    in_flight: int
    prefix: bytes
    seconds: float | None  # duration mode
    warmup: float
    count: int | None  # bounded mode: indexes first, first+step, ... (count of them)
    first: int = 0
    step: int = 1

    def indexes(self, conn: int) -> Iterator[int]:
        if self.count is None:
            return (conn + k * self.connections for k in range(1 << 62))
        return iter(range(self.first + conn * self.step, self.first + self.count * self.step,
                          self.connections * self.step))


async def run_load(plan: LoadPlan) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    started = time.perf_counter_ns()
    if plan.seconds is None:
        window = Window(started, 1 << 62)
    else:
        start = started + int(plan.warmup * NS_PER_S)
        window = Window(start, start + int(plan.seconds * NS_PER_S))
    cpu = time.process_time()
    done = []
    for conn in range(plan.connections):
        future: asyncio.Future[None] = loop.create_future()
        factory = partial(LoadConnection, plan.indexes(conn), plan.prefix, plan.in_flight, window,
                          plan.count is not None, future)
        await loop.create_connection(factory, "127.0.0.1", plan.port)
        done.append(future)
    await asyncio.gather(*done)
    finished = time.perf_counter_ns()
    return load_result(plan, window, started, finished, time.process_time() - cpu)


def load_result(plan: LoadPlan, window: Window, started: int, finished: int, cpu: float) -> dict[str, Any]:
    span = finished - started if plan.seconds is None else window.end - window.start
    elapsed = span / NS_PER_S
    answered = window.replies - window.errors  # AT lines: "? <line>" replies do not count
    return {"requests": window.replies, "seconds": round(elapsed, 3),
            "rate": round(answered / elapsed, 1) if elapsed else 0.0, "errors": window.errors,
            "all_answered": window.all_replies - window.all_errors,
            "loadgen_cpu": round(cpu / ((finished - started) / NS_PER_S), 3),
            **latency_summary(window.latencies)}


# -- propagate: fixed-rate IAMATs to one node, watching another's Redis ----

_KEYSPACE = re.compile(rb"__keyspace@0__:herd:client:([^\r*]+)\r\n")


async def watch_keyspace(redis_port: int, prefix: bytes, arrivals: dict[int, int],
                         ready: asyncio.Future[None]) -> None:
    """Timestamp the first store of each client ``<prefix><n>`` in a Redis, from
    its keyspace notifications (``hset`` on ``herd:client:<id>``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", redis_port)
    writer.write(resp_command(b"CONFIG", b"SET", b"notify-keyspace-events", b"Kh"))
    writer.write(resp_command(b"PSUBSCRIBE", b"__keyspace@0__:herd:client:*"))
    await reader.readuntil(b"+OK\r\n")
    await reader.readuntil(b":1\r\n")  # subscribed to one pattern
    ready.set_result(None)
    buffer = b""
    while chunk := await reader.read(1 << 16):
        now = time.perf_counter_ns()
        buffer += chunk
        end = 0
        for match in _KEYSPACE.finditer(buffer):
            end = match.end()
            client = match.group(1)
            if client.startswith(prefix) and client[len(prefix):].isdigit():
                arrivals.setdefault(int(client[len(prefix):]), now)
        buffer = buffer[end:]


def resp_command(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


async def drain_replies(reader: asyncio.StreamReader, sent: deque[int], acks: list[int]) -> None:
    while chunk := await reader.read(1 << 16):
        now = time.perf_counter_ns()
        for _ in range(min(chunk.count(b"\n"), len(sent))):
            acks.append(now - sent.popleft())


async def send_at_rate(writer: asyncio.StreamWriter, prefix: bytes, rate: float, seconds: float,
                       sent_at: dict[int, int], outstanding: deque[int]) -> None:
    start = time.perf_counter_ns()
    total = int(rate * seconds)
    index = 0
    while index < total:
        now = time.perf_counter_ns()
        due = min(total, int((now - start) * rate / NS_PER_S) + 1)
        if due > index:
            when = client_time(time.time_ns())
            lines = []
            for i in range(index, due):
                lines.append(iamat(prefix, i, when))
                sent_at[i] = now
                outstanding.append(now)
            index = due
            writer.write(b"".join(lines))
        # Until the next update is due: a wake-up per update, where a fixed
        # 0.5 ms nap woke this tool 9 times per update at 100/s.
        next_due = start + index * NS_PER_S / rate
        await asyncio.sleep(max(0.0, (next_due - time.perf_counter_ns()) / NS_PER_S))


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) clock ticks of all this machine's CPUs since boot, from
    /proc/stat (idle and I/O wait are not busy); (0, 0) where there is none."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(t) for t in stat.readline().split()[1:9]]  # user .. steal
    except (OSError, ValueError):
        return 0, 0
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """The share of the machine's CPU time that was busy between two cpu_jiffies()."""
    total = after[1] - before[1]
    return round((after[0] - before[0]) / total, 3) if total > 0 else None


async def run_propagate(port: int, redis_port: int, rate: float, seconds: float,
                        prefix: bytes, settle: float = 3.0) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    arrivals: dict[int, int] = {}
    ready: asyncio.Future[None] = loop.create_future()
    watcher = asyncio.ensure_future(watch_keyspace(redis_port, prefix, arrivals, ready))
    await asyncio.wait_for(asyncio.shield(ready), 10)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent_at: dict[int, int] = {}
    outstanding: deque[int] = deque()
    acks: list[int] = []
    drainer = asyncio.ensure_future(drain_replies(reader, outstanding, acks))
    before, own_before = cpu_jiffies(), resource.getrusage(resource.RUSAGE_SELF)
    await send_at_rate(writer, prefix, rate, seconds, sent_at, outstanding)
    busy, own = busy_share(before, cpu_jiffies()), resource.getrusage(resource.RUSAGE_SELF)
    deadline = time.monotonic() + settle
    while len(arrivals) < len(sent_at) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    writer.close()
    watcher.cancel()
    drainer.cancel()
    latencies = [arrivals[i] - t for i, t in sent_at.items() if i in arrivals]
    ack = latency_summary(acks)
    return {"sent": len(sent_at), "arrived": len(latencies), "rate": rate,
            **latency_summary(latencies), "ack_p50_ms": ack["p50_ms"], "ack_p99_ms": ack["p99_ms"],
            "machine_busy": busy, **own_cost(own_before, own, len(sent_at))}


def own_cost(before: resource.struct_rusage, after: resource.struct_rusage, updates: int) -> dict[str, float]:
    """What this tool spent per update sent between two getrusage()s: CPU, and
    how often it woke up (voluntary context switches); on shared cores that
    is CPU the measured herd does not get."""
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"tool_cpu_us_per_update": round(cpu * 1e6 / max(updates, 1), 1),
            "tool_wakeups_per_update": round((after.ru_nvcsw - before.ru_nvcsw) / max(updates, 1), 2)}


# -- redis-writes: the storage floor, plain pipelined writes of herd's records --


def record_commands(prefix: bytes, index: int, when: bytes) -> bytes:
    """The plain writes of one client record as SPEC section 4 lays it out:
    HSET of the seven client fields, and GEOADD of its position, in RESP."""
    client = b"bench%d" % index
    location = LOCATIONS[index % len(LOCATIONS)]
    split = max(location.rfind(b"+"), location.rfind(b"-"))
    lat, lon = location[:split], location[split:]
    skew = b"+0.000%06d" % (index % 1_000_000)
    at = b"AT Bailey %s %s %s %s" % (skew, client, location, when)
    return (resp_command(b"HSET", prefix + b"client:" + client, b"at", at, b"server", b"Bailey",
                         b"skew", skew, b"location", location, b"lat", lat, b"lon", lon, b"time", when)
            + resp_command(b"GEOADD", prefix + b"geo", lon, lat, client))


class RedisWriter(asyncio.Protocol):
    """One connection keeping ``in_flight`` records (two commands each)
    outstanding until ``deadline`` (perf_counter_ns); every reply is one
    integer line, so replies are counted by newlines."""

    def __init__(self, indexes: Iterator[int], in_flight: int, deadline: int, done: asyncio.Future[None]):
        self._indexes = indexes
        self._in_flight = in_flight
        self._deadline = deadline
        self._done = done
        self._outstanding = 0  # replies awaited
        self._replies = 0  # of a record whose other reply is still awaited
        self.records = 0  # acknowledged: both commands answered
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._send(self._in_flight)

    def data_received(self, data: bytes) -> None:
        if b"-" in data:  # the replies are non-negative integers: this is an error reply
            self._done.set_exception(RuntimeError(f"Redis refused a write: {data[:200]!r}"))
            return
        count = data.count(b"\n")
        self._outstanding -= count
        self._replies += count
        records, self._replies = divmod(self._replies, 2)
        self.records += records
        if time.perf_counter_ns() < self._deadline:
            self._send(records)
        elif not self._outstanding and not self._done.done():
            self._done.set_result(None)

    def _send(self, n: int) -> None:
        when = client_time(time.time_ns())
        out = [record_commands(b"herd:", next(self._indexes), when) for _ in range(n)]
        self._outstanding += 2 * n
        assert self.transport is not None
        self.transport.write(b"".join(out))


async def run_redis_writes(port: int, connections: int, in_flight: int, seconds: float) -> dict[str, Any]:
    """Pipelined plain writes of new client records for ``seconds``; the
    records acknowledged (both commands answered)."""
    loop = asyncio.get_running_loop()
    started, cpu = time.perf_counter_ns(), time.process_time()
    deadline = started + int(seconds * NS_PER_S)
    writers, done = [], []
    for conn in range(connections):
        future: asyncio.Future[None] = loop.create_future()
        _, writer = await loop.create_connection(
            partial(RedisWriter, itertools.count(conn, connections), in_flight, deadline, future),
            "127.0.0.1", port)
        writers.append(writer)
        done.append(future)
    await asyncio.gather(*done)
    elapsed = (time.perf_counter_ns() - started) / NS_PER_S
    records = sum(w.records for w in writers)
    return {"records": records, "seconds": round(elapsed, 3), "rate": round(records / elapsed, 1),
            "loadgen_cpu": round((time.process_time() - cpu) / elapsed, 3)}


# -- redis-chain: three fsync'd writes in a row, the always-policy propagation reference --


async def run_redis_chain(ports: Sequence[int], rate: float, seconds: float) -> dict[str, Any]:
    """SPEC section 8's reference for propagation with ``appendfsync always``:
    a client record written (HSET + GEOADD, as redis-writes) to each Redis of
    ``ports`` in turn, the next once the one before has answered, a chain
    starting every 1/``rate`` s (or when the one before ends, if later) for
    ``seconds``; the latency of each whole chain."""
    connections = [await asyncio.open_connection("127.0.0.1", port) for port in ports]
    latencies: list[int] = []
    started = time.perf_counter_ns()
    for index in itertools.count():
        due = started + int(index * NS_PER_S / rate)
        if due - started >= seconds * NS_PER_S:
            break
        await asyncio.sleep(max(0.0, (due - time.perf_counter_ns()) / NS_PER_S))
        begun = time.perf_counter_ns()
        for reader, writer in connections:
            writer.write(record_commands(b"chain:", index, client_time(time.time_ns())))
            for _ in range(2):  # two integer replies
                line = await reader.readline()
                if not line.startswith(b":"):
                    raise RuntimeError(f"Redis refused a write: {line[:200]!r}")
        latencies.append(time.perf_counter_ns() - begun)
    for _, writer in connections:
        writer.close()
    return {"chains": len(latencies), "writes_per_chain": len(ports), "rate": rate,
            **latency_summary(latencies)}


# -- the ceiling: a no-storage Twisted line server --------------------------


def serve_ceiling(port: int) -> int:
    """Answer IAMAT like a node (herd.wire.client), storing nothing, until
    SIGTERM; on the node's reactor (herd.reactor), so that the two compare
    like with like."""
    from herd.reactor import install

    reactor = install()
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.protocol import Factory

    from herd.wire.client import Iamat, Invalid, make_record, parse_request
    from herd.wire.lines import LineProtocol

    max_future_ns = 3600 * NS_PER_S

    class CeilingConnection(LineProtocol):
        def line_received(self, line: bytes) -> None:
            now = time.time_ns()
            request = parse_request(line, now, max_future_ns)
            if request is None:
                return
            if isinstance(request, Iamat):
                reply = make_record(b"Ceiling", now, request).line + b"\n"
            elif isinstance(request, Invalid):
                reply = request.reply
            else:
                reply = b"? " + line + b"\n"
            assert self.transport is not None
            self.transport.write(reply)

    factory = Factory.forProtocol(CeilingConnection)
    serverFromString(reactor, f"tcp:{port}:interface=127.0.0.1").listen(factory)
    print(f"ceiling server listening on 127.0.0.1:{port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]
    return 0


# -- command line -------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m herd.tools.bench_load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    load = sub.add_parser("load", help="pipelined IAMAT load; prints JSON")
    load.add_argument("port", type=int)
    load.add_argument("--connections", type=int, default=8)
    load.add_argument("--in-flight", type=int, default=16)
    load.add_argument("--seconds", type=float, default=None)
    load.add_argument("--warmup", type=float, default=0.5)
    load.add_argument("--count", type=int, default=None)
    load.add_argument("--first", type=int, default=0)
    load.add_argument("--step", type=int, default=1)
    load.add_argument("--prefix", default="bench")
    prop = sub.add_parser("propagate", help="fixed-rate IAMATs, timed to another node's Redis")
    prop.add_argument("port", type=int)
    prop.add_argument("redis_port", type=int)
    prop.add_argument("--rate", type=float, default=1000.0)
    prop.add_argument("--seconds", type=float, default=3.0)
    prop.add_argument("--prefix", default="prop")
    writes = sub.add_parser("redis-writes", help="pipelined HSET + GEOADD of client records; prints JSON")
    writes.add_argument("port", type=int)
    writes.add_argument("--connections", type=int, default=8)
    writes.add_argument("--in-flight", type=int, default=16, help="records outstanding per connection")
    writes.add_argument("--seconds", type=float, default=5.0)
    chain = sub.add_parser("redis-chain", help="client records written to each Redis in turn; prints JSON")
    chain.add_argument("ports", type=int, nargs="+")
    chain.add_argument("--rate", type=float, default=1000.0)
    chain.add_argument("--seconds", type=float, default=3.0)
    ceiling = sub.add_parser("ceiling-server", help="no-storage IAMAT line server")
    ceiling.add_argument("port", type=int)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "ceiling-server":
        return serve_ceiling(args.port)
    if args.command == "load":
        if (args.seconds is None) == (args.count is None):
            print("bench_load: give exactly one of --seconds and --count", file=sys.stderr)
            return 2
        plan = LoadPlan(args.port, args.connections, args.in_flight, args.prefix.encode(),
                        args.seconds, args.warmup, args.count, args.first, args.step)
        result = asyncio.run(run_load(plan))
    elif args.command == "redis-writes":
        result = asyncio.run(run_redis_writes(args.port, args.connections, args.in_flight, args.seconds))
    elif args.command == "redis-chain":
        result = asyncio.run(run_redis_chain(args.ports, args.rate, args.seconds))
    else:
        result = asyncio.run(run_propagate(args.port, args.redis_port, args.rate, args.seconds,
                                           args.prefix.encode()))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
