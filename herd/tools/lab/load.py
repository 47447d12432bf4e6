"""Client load from the lab's observer namespace.

``Load``: IAMATs at a fixed rate to random hosts that are up, for a fixed
set of client ids (so updates overwrite each other), with strictly
increasing client times; every reply is judged and the newest acknowledged
update of each client kept in a ``Ledger`` (what must never be lost).

``Probe``: updates at a fixed rate into one host, each for a new client id,
and a poller on another host's loopback Redis that notes when each first
shows up there: propagation delay from the client's send to the far node's
Redis, on one clock (this process's monotonic clock).

Both run in threads that moved into the observer's namespace for good, so
every socket they make is the observer's.
"""

from __future__ import annotations

import asyncio
import random
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from herd.tools.lab import netns
from herd.tools.lab.hosts import CLIENT_KEY, NsResp
from herd.tools.lab.plan import CLIENT_PORT, OPS_NS, Host

NS_PER_S = 1_000_000_000
CONNECT_TIMEOUT = 1.0
REPLY_TIMEOUT = 6.0  # a node whose Redis stopped answers '? ' within its Redis timeouts (3 s)
POOL_SIZE = 4  # idle connections kept per host
MAX_IN_FLIGHT = 500


def time_text(ns: int) -> str:
    """Integer nanoseconds as POSIX seconds with 9 fractional digits."""
    return f"{ns // NS_PER_S}.{ns % NS_PER_S:09d}"


def time_ns_of(text: bytes) -> int | None:
    """A stored client time (``[0-9]+(.[0-9]{1,9})?``) in integer nanoseconds."""
    whole, _, fraction = text.partition(b".")
    if not whole.isdigit() or (fraction and not fraction.isdigit()) or len(fraction) > 9:
        return None
    return int(whole) * NS_PER_S + int(fraction.ljust(9, b"0") or b"0")


@dataclass
class Update:
    client: str
    ns: int
    location: str
    host: str
    result: str = "pending"  # acked, refused, error, bad-reply


@dataclass
class Ledger:
    """Every update sent during a run, and each client's newest acknowledged one."""

    sent: dict[str, dict[int, str]] = field(default_factory=dict)  # client -> {time ns: location}
    acked: dict[str, Update] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    last_ns: int = 0

    def next_time(self) -> int:
        """Wall time in ns, strictly increasing over the run."""
        self.last_ns = max(time.time_ns(), self.last_ns + 1)
        return self.last_ns

    def judge(self, update: Update, reply: bytes) -> None:
        """Count a reply; an AT line echoing exactly what was sent acknowledges it."""
        first = reply.split(b"\n", 1)[0]
        tail = f" {update.client} {update.location} {time_text(update.ns)}".encode()
        if first.startswith(b"? "):
            update.result = "refused"
        elif first.startswith(f"AT {update.host} ".encode()) and first.endswith(tail) \
                and len(first.split()) == 6:
            update.result = "acked"
            best = self.acked.get(update.client)
            if best is None or update.ns > best.ns:
                self.acked[update.client] = update
        else:
            update.result = "bad-reply" if first else "error"
        self.counts[update.result] += 1


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Load:
    """IAMATs at ``rate`` per second to random hosts among ``targets()``."""

    def __init__(self, ledger: Ledger, targets: Callable[[], Sequence[Host]], rate: float, clients: int,
                 seed: int, prefix: str = "lab"):
        self.ledger = ledger
        self.targets = targets
        self.rate = rate
        self.clients = clients
        self.rng = random.Random(seed)
        self.prefix = prefix
        self._stopping = False
        self._pools: dict[Host, list[Conn]] = {}
        self._thread = threading.Thread(target=self._run, name="lab-load", daemon=True)

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sending and wait for the replies still due (bounded)."""
        self._stopping = True
        self._thread.join(timeout=CONNECT_TIMEOUT + REPLY_TIMEOUT + 5)

    def _run(self) -> None:
        try:
            netns.enter_for_good(OPS_NS)
            asyncio.run(self._main())
        except Exception as err:  # reported, and it fails the run
            self.ledger.counts["load_crashed"] += 1
            print(f"herd lab: load failed: {err!r}", file=sys.stderr)

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        interval, next_at = 1.0 / self.rate, loop.time()
        while not self._stopping:
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            next_at = max(next_at + interval, loop.time() - 0.5)  # no long catch-up bursts
            if len(tasks) >= MAX_IN_FLIGHT:
                self.ledger.counts["skipped"] += 1
                continue
            task = asyncio.create_task(self._one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=CONNECT_TIMEOUT + REPLY_TIMEOUT + 1)
        for pool in self._pools.values():
            for _, writer in pool:
                writer.close()

    async def _one(self) -> None:
        targets = self.targets()
        if not targets:
            self.ledger.counts["no_target"] += 1
            return
        host = self.rng.choice(list(targets))
        client = f"{self.prefix}{self.rng.randrange(self.clients):04d}"
        location = f"{self.rng.uniform(-80, 80):+.6f}{self.rng.uniform(-179, 179):+.6f}"
        update = Update(client, self.ledger.next_time(), location, host.name)
        self.ledger.sent.setdefault(client, {})[update.ns] = location
        self.ledger.counts["sent"] += 1
        line = f"IAMAT {client} {location} {time_text(update.ns)}\n".encode()
        try:
            reply = await self._send(host, line)
        except (TimeoutError, OSError, EOFError, ValueError):
            self.ledger.counts["error"] += 1
            update.result = "error"
            return
        self.ledger.judge(update, reply)

    async def _send(self, host: Host, line: bytes) -> bytes:
        pool = self._pools.setdefault(host, [])
        if pool:
            reader, writer = pool.pop()
        else:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host.address, CLIENT_PORT), CONNECT_TIMEOUT)
        ok = False
        try:
            writer.write(line)
            reply = await asyncio.wait_for(reader.readline(), REPLY_TIMEOUT)
            ok = reply.endswith(b"\n")
            return reply
        finally:
            if ok and len(pool) < POOL_SIZE and not self._stopping:
                pool.append((reader, writer))
            else:
                writer.close()


class Probe:
    """``rate`` updates per second for ``duration`` seconds into ``origin`` (one
    persistent connection, replies read by a second thread, so a slow reply
    never delays the next send), each for a new client id; a poller reads
    ``target``'s Redis about every millisecond for the ones not seen yet."""

    def __init__(self, origin: Host, target: Host, rate: float, duration: float, prefix: str):
        self.origin = origin
        self.target = target
        self.rate = rate
        self.duration = duration
        self.prefix = prefix
        self.sent_at: dict[str, float] = {}
        self.seen_at: dict[str, float] = {}
        self.acked = 0
        self.refused = 0
        self._done_sending = threading.Event()
        self._lock = threading.Lock()

    def run(self, settle: float = 5.0) -> list[float]:
        """Send, wait up to ``settle`` seconds for the last ones to arrive; the
        propagation delays in seconds of every update seen at ``target``."""
        sock = netns.connect_in(OPS_NS, self.origin.address, CLIENT_PORT, CONNECT_TIMEOUT)
        sock.settimeout(REPLY_TIMEOUT)
        threads = [threading.Thread(target=self._replies, args=(sock,), daemon=True),
                   threading.Thread(target=self._poll, args=(settle,), daemon=True)]
        for thread in threads:
            thread.start()
        try:
            self._send(sock)
        finally:
            self._done_sending.set()
            for thread in threads:
                thread.join(timeout=settle + REPLY_TIMEOUT + 2)
            sock.close()
        return sorted(self.seen_at[c] - self.sent_at[c] for c in self.seen_at)

    def _send(self, sock: socket.socket) -> None:
        interval = 1.0 / self.rate
        start = next_at = time.monotonic()
        seq = 0
        while next_at - start < self.duration:
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_at += interval
            seq += 1
            client = f"{self.prefix}{seq:06d}"
            line = f"IAMAT {client} +10.000000+020.000000 {time_text(time.time_ns())}\n".encode()
            with self._lock:
                self.sent_at[client] = time.monotonic()
            sock.sendall(line)

    def _replies(self, sock: socket.socket) -> None:
        reader = sock.makefile("rb")
        try:
            while not (self._done_sending.is_set() and self.acked + self.refused >= len(self.sent_at)):
                line = reader.readline()
                if not line:
                    return
                if line.startswith(b"AT "):
                    self.acked += 1
                else:
                    self.refused += 1
        except OSError:
            return

    def _poll(self, settle: float) -> None:
        redis = NsResp(self.target)
        deadline: float | None = None
        try:
            while True:
                with self._lock:
                    waiting = [c for c in self.sent_at if c not in self.seen_at]
                if waiting:
                    found = redis.pipeline([("EXISTS", CLIENT_KEY + c.encode()) for c in waiting])
                    now = time.monotonic()
                    for client, exists in zip(waiting, found, strict=True):
                        if exists:
                            self.seen_at[client] = now
                if self._done_sending.is_set():
                    deadline = deadline or time.monotonic() + settle
                    if not waiting or time.monotonic() > deadline:
                        return
                time.sleep(0.001)
        finally:
            redis.close()
