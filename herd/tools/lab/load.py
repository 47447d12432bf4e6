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

import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from herd.tools.chaos import PacedLoad, time_text
from herd.tools.lab import netns
from herd.tools.lab.hosts import CLIENT_KEY, NsResp
from herd.tools.lab.plan import CLIENT_PORT, OPS_NS, Host

CONNECT_TIMEOUT = 1.0
REPLY_TIMEOUT = 6.0  # a node whose Redis stopped answers '? ' within its Redis timeouts (3 s)
MAX_IN_FLIGHT = 500


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


class Load(PacedLoad):
    """IAMATs at ``rate`` per second to random hosts among ``targets()``, from
    the observer's namespace."""

    label = "lab"
    max_in_flight = MAX_IN_FLIGHT
    reply_timeout = REPLY_TIMEOUT

    def __init__(self, ledger: Ledger, targets: Callable[[], Sequence[Host]], rate: float, clients: int,
                 seed: int, prefix: str = "lab"):
        super().__init__(rate, seed, ledger.counts)
        self.ledger = ledger
        self.targets = targets
        self.clients = clients
        self.prefix = prefix

    def _enter(self) -> None:
        netns.enter_for_good(OPS_NS)

    async def _one(self) -> None:
        targets = self.targets()
        if not targets:
            self.counts["no_target"] += 1
            return
        host = self.rng.choice(list(targets))
        client = f"{self.prefix}{self.rng.randrange(self.clients):04d}"
        location = f"{self.rng.uniform(-80, 80):+.6f}{self.rng.uniform(-179, 179):+.6f}"
        update = Update(client, self.ledger.next_time(), location, host.name)
        self.ledger.sent.setdefault(client, {})[update.ns] = location
        self.counts["sent"] += 1
        line = f"IAMAT {client} {location} {time_text(update.ns)}".encode()
        try:
            reply = await self._pooled(host.name, host.address, CLIENT_PORT, line)
        except (TimeoutError, OSError, EOFError, ValueError):
            self.counts["error"] += 1
            update.result = "error"
            return
        self.ledger.judge(update, reply)


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
