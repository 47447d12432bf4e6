"""``herd chaos``: fault injection against a real five-node herd on this machine.

It starts the SPEC five-node herd (links Bailey-Bona, Bailey-Campbell,
Bona-Campbell, Bona-Clark, Campbell-Jaquez, Clark-Jaquez), each node as
``python -m herd serve`` with its own ``redis-server`` (the shipped
ops/redis/redis.conf: AOF, ``appendfsync always``), on free loopback ports in
a temporary directory (``herd.tools.harness.LocalHerd``). A
bounded IAMAT load (``--rate`` per second, ``--clients`` client ids so that
updates overwrite each other, strictly increasing client times) goes to
random running nodes over short-lived and persistent connections; every
acknowledged update (a reply line ``AT ...`` for exactly what was sent) is
recorded. Meanwhile ``--cycles`` fault cycles each do one of:

- ``node_kill``: ``kill -9`` a node, restart it 0.2-2 s later;
- ``redis_kill``: ``kill -9`` a node's redis-server, restart it 0.2-2 s later
  on the same data directory;
- ``node_stop``: SIGSTOP a node for 0.5-2 s, then SIGCONT;
- ``partition``: ``kill -9`` every neighbour of a node (isolating it) and
  restart them 1-3 s later.

Cycles run one after another, each fault undone before the next; the last
one is still in place when the load stops, and the final heal (every process
running, none stopped) undoes it. The run then waits for the nodes to agree
and checks that for every client every node holds its newest acknowledged
update or a newer one, that no node holds an update that was never sent, and
that ``herd check`` agrees. Exit 0 only when nothing was lost and the herd
converged within ``--converge-timeout`` seconds of the heal.

This is a test tool, not the serving path: the process harness, a thread
running an asyncio load, and a blocking RESP client. It imports nothing from
the node.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Self

from herd.tools.harness import HarnessError, LocalHerd, LocalNode, child_env, silent_places, utc_stamp
from herd.tools.resp import Resp

# SPEC section 5: the shipped five-node herd, each link listed by both ends.
TOPOLOGY: dict[str, list[str]] = {
    "Bailey": ["Bona", "Campbell"],
    "Bona": ["Bailey", "Campbell", "Clark"],
    "Campbell": ["Bailey", "Bona", "Jaquez"],
    "Clark": ["Bona", "Jaquez"],
    "Jaquez": ["Campbell", "Clark"],
}
FAULT_KINDS = ("node_kill", "redis_kill", "node_stop", "partition")
NS_PER_S = 1_000_000_000
CLIENT_PREFIX = "chaos"
KEY_PREFIX = b"herd:client:"

CONNECT_TIMEOUT = 1.0  # seconds for a load connection to be accepted
REPLY_TIMEOUT = 5.0  # seconds for its reply (Redis outages are answered within ~3 s)
MAX_IN_FLIGHT = 1000  # load requests outstanding at once; beyond, a tick is skipped
POOL_SIZE = 4  # idle persistent connections kept per node
START_TIMEOUT = 15.0  # seconds for a process to accept connections
START_ATTEMPTS = 3  # a node that exits at start-up (its port briefly taken) is started again
GAP = (0.5, 1.5)  # seconds between fault cycles
WARMUP = 2.0  # seconds of load before the first fault


class ChaosError(Exception):
    """The options do not describe a run (a process that would not start raises
    HarnessError)."""


# -- small helpers -----------------------------------------------------------


def time_text(ns: int) -> str:
    """Integer nanoseconds as POSIX seconds with 9 fractional digits."""
    return f"{ns // NS_PER_S}.{ns % NS_PER_S:09d}"


def time_ns_of(text: bytes) -> int | None:
    """A stored client time (``[0-9]+(.[0-9]{1,9})?``) in integer nanoseconds."""
    whole, _, fraction = text.partition(b".")
    if not whole.isdigit() or (fraction and not fraction.isdigit()) or len(fraction) > 9:
        return None
    return int(whole) * NS_PER_S + int(fraction.ljust(9, b"0") or b"0")


def neighbours(name: str) -> list[str]:
    """Nodes linked to ``name`` (links are undirected)."""
    return sorted(set(TOPOLOGY[name]) | {n for n, peers in TOPOLOGY.items() if name in peers})


# -- processes ----------------------------------------------------------------


@dataclass
class Slot:
    """One node of the herd (its Redis in ``node.redis``) and what faults hold it."""

    node: LocalNode
    down: bool = False  # killed by a fault, not yet back
    stopped: bool = False  # SIGSTOPped

    @property
    def name(self) -> str:
        return self.node.name


class ChaosHerd:
    """The five nodes and their Redis servers under ``root``."""

    def __init__(self, root: Path, secret: str, events: Callable[[str], None]):
        self.events = events
        # The places provider is never asked (the load sends only IAMAT).
        self.herd = LocalHerd(root, TOPOLOGY, secret=secret, places=silent_places("HERD_CHAOS_PLACES_KEY"),
                              env={"HERD_CHAOS_PLACES_KEY": "unused"}, node_args=["--log-format", "text"],
                              stop_grace=0, mark_starts=True)
        self.config = self.herd.config
        self.slots = {name: Slot(node) for name, node in self.herd.nodes.items()}

    def __getitem__(self, name: str) -> Slot:
        return self.slots[name]

    def targets(self) -> list[tuple[str, int]]:
        """(name, port) of the nodes running and not held by a fault."""
        return [(s.name, s.node.port) for s in self.slots.values()
                if not s.down and not s.stopped and s.node.alive()]

    # -- starting --------------------------------------------------------

    def start_redis(self, names: Sequence[str]) -> None:
        self.herd.start_redis(names)

    def start_nodes(self, names: Sequence[str]) -> None:
        """Start nodes (the same command every time) and wait until each listens;
        a node that exits at once (its port briefly taken) is started again."""
        nodes = [self.slots[name].node for name in names]
        for node in nodes:
            node.start(wait=False)
        for node in nodes:
            for attempt in range(1, START_ATTEMPTS + 1):
                try:
                    node.wait_ready(START_TIMEOUT)
                    break
                except HarnessError:
                    if attempt == START_ATTEMPTS or node.alive():
                        raise
                    self.events(f"node {node.name} exited at start-up; starting it again")
                    time.sleep(0.5)
                    node.start(wait=False)

    def wait_links(self, timeout: float = 15.0) -> bool:
        """Wait until every node logged a link up to each neighbour."""
        try:
            self.herd.wait_links(timeout)
        except TimeoutError:
            return False
        return True

    def heal(self) -> None:
        """Every process running, none stopped."""
        for slot in self.slots.values():
            if slot.stopped:
                slot.node.resume()
                slot.stopped = False
        self.start_redis([n for n, s in self.slots.items() if not s.node.redis.alive()])
        self.start_nodes([n for n, s in self.slots.items() if not s.node.alive()])
        for slot in self.slots.values():
            slot.down = False

    def stop_all(self) -> None:
        self.herd.stop()


# -- the load -----------------------------------------------------------------


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass
class Outcome:
    """One update sent: what, where, and how it was answered."""

    client: str
    ns: int
    location: str
    node: str
    sent_at: float  # seconds since the run started
    result: str = "pending"  # acked, refused, error, bad-reply
    detail: str = ""


class PacedLoad:
    """IAMATs at ``rate`` per second from an asyncio loop in a thread, each
    from ``_one`` (a subclass's), at most MAX_IN_FLIGHT at once (beyond, a
    tick is skipped: counted ``skipped``), with pooled connections per target.
    ``counts`` tallies what happened (``load_crashed`` when the load itself
    failed: a run must report it)."""

    label = "chaos"
    max_in_flight = MAX_IN_FLIGHT
    reply_timeout = REPLY_TIMEOUT

    def __init__(self, rate: float, seed: int, counts: Counter[str]):
        self.rate = rate
        self.rng = random.Random(seed)
        self.counts = counts
        self._stopping = False
        self._pools: dict[str, list[Conn]] = {}
        self._thread = threading.Thread(target=self._run, name=f"{self.label}-load", daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sending; wait for the replies still due (bounded by their timeouts)."""
        self._stopping = True
        self._thread.join(timeout=CONNECT_TIMEOUT + self.reply_timeout + 5)

    def _enter(self) -> None:
        """Called in the load's thread before its loop starts."""

    def _run(self) -> None:
        try:
            self._enter()
            asyncio.run(self._main())
        except Exception as err:  # keep the verdict honest: a dead load is reported
            self.counts["load_crashed"] += 1
            print(f"herd {self.label}: load failed: {err!r}", file=sys.stderr)

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        interval = 1.0 / self.rate
        next_at = loop.time()
        while not self._stopping:
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            next_at = max(next_at + interval, loop.time() - 0.5)  # no long catch-up bursts
            if len(tasks) >= self.max_in_flight:
                self.counts["skipped"] += 1
                continue
            task = asyncio.create_task(self._one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=CONNECT_TIMEOUT + self.reply_timeout + 1)
        for task in list(tasks):
            task.cancel()
        for pool in self._pools.values():
            for _, writer in pool:
                writer.close()

    async def _one(self) -> None:
        raise NotImplementedError

    async def _pooled(self, key: str, host: str, port: int, line: bytes) -> bytes:
        """Send ``line`` over an idle pooled connection to ``host`` (or a new
        one) and read one reply line; the connection goes back to the pool."""
        pool = self._pools.setdefault(key, [])
        if pool:
            reader, writer = pool.pop()
        else:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT)
        ok = False
        try:
            writer.write(line + b"\n")
            reply = await asyncio.wait_for(reader.readline(), self.reply_timeout)
            ok = reply.endswith(b"\n")
            return reply
        finally:
            if ok and len(pool) < POOL_SIZE and not self._stopping:
                pool.append((reader, writer))
            else:
                writer.close()


class Load(PacedLoad):
    """IAMATs at ``rate`` per second to random running nodes, from an asyncio
    loop in a thread. ``acked[client]`` is the newest acknowledged client time."""

    def __init__(self, herd: ChaosHerd, rate: float, clients: int, seed: int,
                 persistent_share: float, t0: float):
        super().__init__(rate, seed, Counter())
        self.herd = herd
        self.clients = clients
        self.persistent_share = persistent_share
        self.t0 = t0
        self.acked: dict[str, Outcome] = {}
        self.sent: dict[str, dict[int, str]] = {}
        self.outcomes: list[Outcome] = []
        self._seq = 0
        self._last_ns = 0

    def _next_time(self) -> int:
        """Wall time in ns plus a per-update counter: strictly increasing, unique."""
        self._seq += 1
        ns = max(time.time_ns() + self._seq, self._last_ns + 1)
        self._last_ns = ns
        return ns

    async def _one(self) -> None:
        targets = self.herd.targets()
        if not targets:
            self.counts["no_target"] += 1
            return
        name, port = self.rng.choice(targets)
        client = f"{CLIENT_PREFIX}{self.rng.randrange(self.clients):04d}"
        location = f"{self.rng.uniform(-80, 80):+.6f}{self.rng.uniform(-179, 179):+.6f}"
        ns = self._next_time()
        out = Outcome(client, ns, location, name, time.monotonic() - self.t0)
        self.outcomes.append(out)
        self.sent.setdefault(client, {})[ns] = location
        self.counts["sent"] += 1
        line = f"IAMAT {client} {location} {time_text(ns)}".encode()
        persistent = self.rng.random() < self.persistent_share
        try:
            if persistent:
                reply = await self._pooled(name, "127.0.0.1", port, line)
            else:
                reply = await self._short_lived(port, line)
        except (OSError, EOFError, ValueError, asyncio.LimitOverrunError) as err:
            out.result, out.detail = "error", type(err).__name__
            self.counts["errors"] += 1
            return
        except Exception as err:  # a bug in this tool: reported, fails the run
            out.result, out.detail = "error", repr(err)
            self.counts["load_crashed"] += 1
            return
        self._judge(out, reply)

    def _judge(self, out: Outcome, reply: bytes) -> None:
        expected = f"AT {out.node} ".encode()
        tail = f" {out.client} {out.location} {time_text(out.ns)}".encode()
        first = reply.split(b"\n", 1)[0]
        if first.startswith(b"? "):
            out.result = "refused"
            self.counts["refused"] += 1
        elif first.startswith(expected) and first.endswith(tail) and len(first.split()) == 6:
            out.result = "acked"
            self.counts["acked"] += 1
            best = self.acked.get(out.client)
            if best is None or out.ns > best.ns:
                self.acked[out.client] = out
        elif not first:
            out.result, out.detail = "error", "no reply"
            self.counts["errors"] += 1
        else:
            out.result, out.detail = "bad-reply", first[:200].decode(errors="replace")
            self.counts["bad_replies"] += 1

    async def _short_lived(self, port: int, line: bytes) -> bytes:
        """Connect, send the line, half-close, read until the node closes."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), CONNECT_TIMEOUT)
        try:
            writer.write(line + b"\n")
            writer.write_eof()
            return await asyncio.wait_for(reader.read(), REPLY_TIMEOUT)
        finally:
            writer.close()


# -- the fault scheduler -----------------------------------------------------


Restore = Callable[[], None]


class Scheduler:
    """Fault cycles, one at a time: apply a fault, wait, undo it, pause. The last
    cycle's fault is left in place for the final heal to undo, so the measured
    convergence starts from a real fault."""

    def __init__(self, herd: ChaosHerd, rng: random.Random, events: Callable[[str], None]):
        self.herd = herd
        self.rng = rng
        self.events = events
        self.faults: Counter[str] = Counter()
        self.cycles = 0

    def run(self, cycles: int, duration: float | None) -> str | None:
        """Run the cycles; return the fault left for the heal, if any."""
        started = time.monotonic()
        for i in range(1, cycles + 1):
            if duration is not None and time.monotonic() - started > duration:
                self.events(f"--duration {duration:g} s reached after {self.cycles} cycles")
                return None
            kind = self.rng.choice(FAULT_KINDS)
            name = self.rng.choice(sorted(TOPOLOGY))
            fault: Callable[[int, str], tuple[float, Restore]] = getattr(self, kind)
            pause, restore = fault(i, name)
            self.faults[kind] += 1
            self.cycles = i
            time.sleep(pause)
            if i == cycles:
                return f"cycle {i}: {kind} {name}"
            restore()
            time.sleep(self.rng.uniform(*GAP))
        return None

    def node_kill(self, i: int, name: str) -> tuple[float, Restore]:
        pause = self.rng.uniform(0.2, 2.0)
        slot = self.herd[name]
        slot.down = True
        slot.node.kill()
        self.events(f"cycle {i}: node_kill {name}: killed -9; restart in {pause:.2f} s")

        def restore() -> None:
            self.herd.start_nodes([name])
            slot.down = False
            self.events(f"cycle {i}: node_kill {name}: restarted, listening")

        return pause, restore

    def redis_kill(self, i: int, name: str) -> tuple[float, Restore]:
        pause = self.rng.uniform(0.2, 2.0)
        self.herd[name].node.redis.kill()
        self.events(f"cycle {i}: redis_kill {name}: redis-server killed -9; restart in {pause:.2f} s")

        def restore() -> None:
            self.herd.start_redis([name])
            self.events(f"cycle {i}: redis_kill {name}: redis-server restarted, serving")

        return pause, restore

    def node_stop(self, i: int, name: str) -> tuple[float, Restore]:
        pause = self.rng.uniform(0.5, 2.0)
        slot = self.herd[name]
        slot.stopped = True
        slot.node.pause()
        self.events(f"cycle {i}: node_stop {name}: SIGSTOP for {pause:.2f} s")

        def restore() -> None:
            slot.node.resume()
            slot.stopped = False
            self.events(f"cycle {i}: node_stop {name}: SIGCONT")

        return pause, restore

    def partition(self, i: int, name: str) -> tuple[float, Restore]:
        pause = self.rng.uniform(1.0, 3.0)
        peers = neighbours(name)
        for peer in peers:
            self.herd[peer].down = True
            self.herd[peer].node.kill()
        self.events(f"cycle {i}: partition {name}: neighbours {', '.join(peers)} killed -9; "
                    f"restart in {pause:.2f} s")

        def restore() -> None:
            self.herd.start_nodes(peers)
            for peer in peers:
                self.herd[peer].down = False
            self.events(f"cycle {i}: partition {name}: neighbours restarted, listening")

        return pause, restore


# -- verdict ------------------------------------------------------------------


def read_states(herd: ChaosHerd) -> dict[str, dict[bytes, bytes]]:
    """Every node's {client id: stored AT line}, read from its Redis."""
    states: dict[str, dict[bytes, bytes]] = {}
    for name, slot in herd.slots.items():
        with Resp(slot.node.redis.port) as r:
            keys = r.scan(KEY_PREFIX + b"*")
            lines = r.pipeline([("HGET", k, "at") for k in keys]) if keys else []
        states[name] = {k[len(KEY_PREFIX):]: v for k, v in zip(keys, lines, strict=True)}
    return states


def agree(states: dict[str, dict[bytes, bytes]]) -> bool:
    first, *rest = states.values()
    return all(s == first for s in rest)


def run_check(config: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "herd", "check", "--config", str(config)],
                          env=child_env(), capture_output=True, text=True,
                          timeout=max(timeout, 5.0))


@dataclass
class Convergence:
    converged: bool = False
    agree_seconds: float | None = None  # heal to all Redis holding the same records
    check_seconds: float | None = None  # heal to `herd check` exiting 0
    last_check: str = ""


def wait_converged(herd: ChaosHerd, healed_at: float, timeout: float) -> Convergence:
    """Poll the nodes' Redis until they agree, then confirm with ``herd check``."""
    result = Convergence()
    deadline = healed_at + timeout
    while True:
        try:
            same = agree(read_states(herd))
        except (OSError, RuntimeError):
            same = False
        if same:
            if result.agree_seconds is None:
                result.agree_seconds = time.monotonic() - healed_at
            check = run_check(herd.config, deadline - time.monotonic())
            result.last_check = check.stdout + check.stderr
            if check.returncode == 0:
                result.check_seconds = time.monotonic() - healed_at
                result.converged = result.check_seconds <= timeout
                return result
        else:
            result.agree_seconds = None
        if time.monotonic() > deadline:
            if not result.last_check:
                check = run_check(herd.config, 10.0)
                result.last_check = check.stdout + check.stderr
            return result
        time.sleep(0.1)


@dataclass
class Loss:
    client: str
    node: str
    acked_ns: int
    acked_by: str
    acked_at: float
    held: str  # the stored AT line, or "(missing)"


def verify(herd: ChaosHerd, load: Load) -> tuple[list[Loss], list[str]]:
    """(losses, bogus records): for every client with an acknowledged update,
    every node must hold it or a newer one, and only updates that were sent."""
    losses: list[Loss] = []
    bogus: list[str] = []
    clients = sorted(load.acked)
    for name, slot in herd.slots.items():
        with Resp(slot.node.redis.port) as r:
            records = r.pipeline([("HMGET", KEY_PREFIX + c.encode(), "time", "location", "at")
                                  for c in clients]) if clients else []
        for client, (held_time, held_loc, at) in zip(clients, records, strict=True):
            best = load.acked[client]
            held_ns = time_ns_of(held_time) if held_time is not None else None
            if held_ns is None or held_ns < best.ns:
                losses.append(Loss(client, name, best.ns, best.node, best.sent_at,
                                   (at or b"(missing)").decode(errors="replace")))
                continue
            sent_location = load.sent.get(client, {}).get(held_ns)
            if sent_location is None or held_loc != sent_location.encode():
                bogus.append(f"{name}: {client}: {(at or b'').decode(errors='replace')}")
    return losses, bogus


# -- the command ---------------------------------------------------------------


def add_chaos_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``herd chaos``."""
    parser.add_argument("--cycles", type=int, default=10, metavar="N",
                        help="fault cycles to run (default 10, about a minute in all)")
    parser.add_argument("--rate", type=float, default=200.0, metavar="PER_S",
                        help="IAMAT updates per second (default 200)")
    parser.add_argument("--clients", type=int, default=300, metavar="N",
                        help="distinct client ids the updates go to (default 300)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the fault schedule and the load (default: random, printed)")
    parser.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                        help="stop starting fault cycles after this long (default: no limit)")
    parser.add_argument("--converge-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="how long the herd may take to agree after the heal (default 30)")
    parser.add_argument("--persistent", type=float, default=0.5, metavar="FRACTION",
                        help="share of updates sent over persistent connections (default 0.5)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (logs, Redis data) even on success")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _positive(value: float, what: str) -> None:
    if not value > 0:
        raise ChaosError(f"{what} must be positive")


def run_chaos(args: argparse.Namespace) -> int:
    """Run the chaos test described by ``args``; 0 when nothing acknowledged was
    lost and the herd converged in time, 1 otherwise, 2 when it could not run,
    130 on Ctrl-C."""
    try:
        _positive(args.rate, "--rate")
        _positive(args.clients, "--clients")
        _positive(args.converge_timeout, "--converge-timeout")
        if args.cycles < 0 or not 0 <= args.persistent <= 1:
            raise ChaosError("--cycles must be >= 0 and --persistent within 0..1")
    except ChaosError as err:
        print(f"herd chaos: {err}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    root = Path(tempfile.mkdtemp(prefix="herd-chaos-"))
    t0 = time.monotonic()
    events_file = open(root / "events.log", "a", encoding="utf-8")

    def events(message: str) -> None:
        line = f"{utc_stamp()} +{time.monotonic() - t0:8.3f}s {message}"
        events_file.write(line + "\n")
        events_file.flush()
        if not args.quiet:
            print(f"herd chaos: {message}", file=sys.stderr, flush=True)

    previous = _raise_on_sigterm()
    herd: ChaosHerd | None = None
    load: Load | None = None
    keep = bool(args.keep)
    code = 2
    try:
        events(f"seed {seed}; temp dir {root}")
        herd = ChaosHerd(root, f"chaos-{random.SystemRandom().getrandbits(64):016x}", events)
        herd.start_redis(list(TOPOLOGY))
        herd.start_nodes(list(TOPOLOGY))
        events("herd up" if herd.wait_links() else "herd up (not every link seen up within 15 s)")
        load = Load(herd, args.rate, args.clients, seed ^ 0x5EED, args.persistent, t0)
        load.start()
        time.sleep(WARMUP)
        scheduler = Scheduler(herd, random.Random(seed), events)
        pending = scheduler.run(args.cycles, args.duration)
        load.stop()
        events(f"load stopped: {load.counts['sent']} sent, {load.counts['acked']} acknowledged")
        herd.heal()
        healed_at = time.monotonic()
        events("healed: every node and redis-server running, none stopped"
               + (f" (undid {pending})" if pending else ""))
        convergence = wait_converged(herd, healed_at, args.converge_timeout)
        losses, bogus = verify(herd, load)
        summary = _summary(seed, scheduler, load, losses, bogus, convergence,
                           time.monotonic() - t0, args.converge_timeout)
        ok = summary["ok"]
        keep = keep or not ok
        if keep:
            summary["temp_dir"] = str(root)
        _write_records(root, load, losses, bogus, convergence, summary)
        _print_summary(summary, losses, bogus, convergence, args.json)
        code = 0 if ok else 1
    except KeyboardInterrupt:
        print("herd chaos: interrupted; cleaning up", file=sys.stderr)
        code = 130
    except (ChaosError, HarnessError) as err:
        print(f"herd chaos: {err}", file=sys.stderr)
        keep = True
        code = 2
    except BaseException:
        keep = True
        raise
    finally:
        try:
            if load is not None:
                load.stop()
        finally:
            if herd is not None:
                herd.stop_all()
            events_file.close()
            signal.signal(signal.SIGTERM, previous)
            if keep:
                print(f"herd chaos: logs and Redis data kept in {root}", file=sys.stderr)
            else:
                shutil.rmtree(root, ignore_errors=True)
    return code


def _raise_on_sigterm() -> Any:
    """SIGTERM stops a run like Ctrl-C does (cleanup included)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        return signal.signal(signal.SIGTERM, handler)
    return signal.getsignal(signal.SIGTERM)


def _summary(seed: int, scheduler: Scheduler, load: Load, losses: list[Loss], bogus: list[str],
             convergence: Convergence, elapsed: float, converge_timeout: float) -> dict[str, Any]:
    lost_clients = sorted({loss.client for loss in losses})
    c = load.counts
    ok = (not losses and not bogus and convergence.converged and c["acked"] > 0
          and not c["bad_replies"] and not c["load_crashed"])
    return {
        "seed": seed,
        "cycles": scheduler.cycles,
        "faults": {kind: scheduler.faults[kind] for kind in FAULT_KINDS},
        "seconds": round(elapsed, 1),
        "sent": c["sent"],
        "acknowledged": c["acked"],
        "refused": c["refused"],
        "errors": c["errors"],
        "bad_replies": c["bad_replies"],
        "skipped": c["skipped"] + c["no_target"],
        "clients_acknowledged": len(load.acked),
        "lost": len(lost_clients),
        "lost_records": len(losses),
        "bogus_records": len(bogus),
        "converged": convergence.converged,
        "converge_seconds": _round(convergence.agree_seconds),
        "check_seconds": _round(convergence.check_seconds),
        "converge_timeout": converge_timeout,
        "ok": ok,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _print_summary(summary: dict[str, Any], losses: list[Loss], bogus: list[str],
                   convergence: Convergence, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        s = summary
        faults = ", ".join(f"{k} {v}" for k, v in s["faults"].items())
        print(f"herd chaos: seed {s['seed']}, {s['cycles']} cycles in {s['seconds']} s")
        print(f"faults: {faults}")
        print(f"updates: {s['sent']} sent, {s['acknowledged']} acknowledged, {s['refused']} refused "
              f"(? replies), {s['errors']} failed (connection errors/timeouts), "
              f"{s['bad_replies']} bad replies")
        print(f"clients: {s['clients_acknowledged']} with acknowledged updates, checked on "
              f"{len(TOPOLOGY)} nodes")
        print(f"lost: {s['lost']}" + (f" clients ({s['lost_records']} node records)" if s["lost"] else ""))
        if s["bogus_records"]:
            print(f"bogus: {s['bogus_records']} records that were never sent")
        if convergence.converged:
            print(f"converged: {s['converge_seconds']} s after heal "
                  f"(herd check agreed at {s['check_seconds']} s)")
        else:
            print(f"NOT converged within {s['converge_timeout']:g} s of the heal")
        print("result: " + ("OK" if s["ok"] else "FAILED"))
    out = sys.stdout if not as_json else sys.stderr
    for loss in losses[:20]:
        print(f"LOST {loss.client} on {loss.node}: acknowledged {time_text(loss.acked_ns)} by "
              f"{loss.acked_by} (sent at +{loss.acked_at:.3f} s); holds {loss.held}", file=out)
    for line in bogus[:20]:
        print(f"BOGUS {line}", file=out)
    if not convergence.converged and convergence.last_check:
        print("last herd check:\n" + convergence.last_check.rstrip(), file=out)


def _write_records(root: Path, load: Load, losses: list[Loss], bogus: list[str],
                   convergence: Convergence, summary: dict[str, Any]) -> None:
    """Everything sent (and how it was answered) and the verdict, for post-mortems."""
    with open(root / "updates.tsv", "w", encoding="utf-8") as f:
        f.write("sent_at\tnode\tclient\ttime\tlocation\tresult\tdetail\n")
        for o in load.outcomes:
            f.write(f"{o.sent_at:.6f}\t{o.node}\t{o.client}\t{time_text(o.ns)}\t{o.location}\t"
                    f"{o.result}\t{o.detail}\n")
    verdict = dict(summary, losses=[vars(loss) for loss in losses], bogus=bogus,
                   last_check=convergence.last_check)
    (root / "verdict.json").write_text(json.dumps(verdict, indent=2))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="herd chaos", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_chaos_arguments(parser)
    return run_chaos(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
