"""Network namespaces, veth cables and the bridge of a lab, and sockets made
inside a namespace.

The root namespace never gets a lab address: the bridge lives in NET_NS,
every host and the observer in a namespace of their own, each cable is
created with both ends already in their namespaces. This process reaches the
lab only through sockets created inside a lab namespace (``socket_in``:
setns(2) for the calling thread, the socket, setns back; a socket keeps the
namespace it was made in) and through ``ip netns exec``.

Clean-up is by name: every namespace whose name starts with PREFIX is the
lab's. A lock file keeps two labs from running (and cleaning) at once.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from herd.tools.lab.plan import BRIDGE, NET_NS, OPS_INDEX, OPS_NS, PREFIX, SUBNET, Host, LabError

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/var/run/netns")
LOCK_PATH = Path("/run/herdlab.lock")
IP_TIMEOUT = 20.0  # seconds for one ip/nft command

_libc = ctypes.CDLL(None, use_errno=True)


def missing_tools() -> str | None:
    """Why this machine cannot run a lab, or None when it can: root, ``ip``
    with network namespaces, ``nft``, ``redis-server``."""
    if os.geteuid() != 0:
        return "herd lab needs root (it makes network namespaces)"
    for tool in ("ip", "nft", "redis-server"):
        if shutil.which(tool) is None:
            return f"herd lab needs {tool} (ops/setup.sh installs it)"
    probe = f"{PREFIX}probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot make a network namespace here: {made.stderr.strip() or made.returncode}"
    try:
        nft = subprocess.run(["ip", "netns", "exec", probe, "nft", "list", "ruleset"],
                             capture_output=True, text=True)
        if nft.returncode != 0:
            return f"nftables does not work in a namespace here: {nft.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def run(argv: Sequence[str], stdin: str | None = None, check: bool = True) -> str:
    """Run a command (``ip``, ``nft``...); its stdout. A failure raises
    LabError with the command and its first line of stderr."""
    try:
        done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=IP_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise LabError(f"{' '.join(argv)}: {err}") from None
    if check and done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[0]
        raise LabError(f"{' '.join(argv)}: {why}")
    return done.stdout


def run_all(commands: Sequence[tuple[Sequence[str], str]]) -> None:
    """Run commands (argv, stdin) side by side; return once all have ended.
    A failure raises LabError (the first one's)."""
    with ThreadPoolExecutor(max_workers=max(1, len(commands))) as pool:
        for done in [pool.submit(run, argv, stdin) for argv, stdin in commands]:
            done.result()


def in_ns(ns: str, *argv: str) -> list[str]:
    """``argv`` run inside namespace ``ns``."""
    return ["ip", "netns", "exec", ns, *argv]


# -- sockets inside a namespace -------------------------------------------------


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def entered(ns: str) -> Iterator[None]:
    """The calling thread inside network namespace ``ns`` for the block (only
    that thread: setns(2) moves one thread), back where it was afterwards."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(NETNS_DIR / ns, os.O_RDONLY)
    except OSError:
        os.close(home)
        raise OSError(f"no namespace {ns}") from None
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def enter_for_good(ns: str) -> None:
    """Move the calling thread into ``ns`` for the rest of its life (a load
    thread: every socket it makes, asyncio's included, is the observer's)."""
    target = os.open(NETNS_DIR / ns, os.O_RDONLY)
    try:
        _setns(target)
    finally:
        os.close(target)


def socket_in(ns: str) -> socket.socket:
    """A TCP socket that belongs to namespace ``ns`` (wherever it is used)."""
    with entered(ns):
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)


def connect_in(ns: str, host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection made from inside namespace ``ns``."""
    sock = socket_in(ns)
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
    except OSError:
        sock.close()
        raise
    return sock


# -- building and removing ---------------------------------------------------------


def lab_namespaces() -> list[str]:
    """Namespaces whose names mark them as the lab's (a run's or a leftover's)."""
    out = run(["ip", "netns", "list"], check=False)
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return sorted(n for n in names if n.startswith(PREFIX))


def build_network(lab_hosts: Sequence[Host]) -> None:
    """The switch (a bridge in NET_NS), the observer and every host, each on
    its own cable to the bridge, with loopback up (every host's Redis listens
    there)."""
    run(["ip", "netns", "add", NET_NS])
    run(["ip", "-n", NET_NS, "link", "add", BRIDGE, "type", "bridge"])
    run(["ip", "-n", NET_NS, "link", "set", BRIDGE, "up"])
    ops_cable = (OPS_NS, f"{PREFIX}vops", f"{PREFIX}bops", f"{SUBNET}.{OPS_INDEX}")
    for ns, veth, port, address in [ops_cable] + [(h.netns, h.veth, h.bridge_port, h.address)
                                                  for h in lab_hosts]:
        run(["ip", "netns", "add", ns])
        run(["ip", "link", "add", veth, "netns", ns, "type", "veth", "peer", "name", port, "netns", NET_NS])
        run(["ip", "-n", NET_NS, "link", "set", port, "master", BRIDGE, "up"])
        run(["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", veth])
        run(["ip", "-n", ns, "link", "set", veth, "up"])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])


def pids_in(ns: str) -> list[int]:
    out = run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def remove_namespaces(names: Sequence[str]) -> list[str]:
    """Kill every process left in each namespace (``ip netns pids``), then
    delete it (its cables and the bridge go with it). Returns what could not
    be removed, with why."""
    problems = []
    for ns in names:
        for pid in pids_in(ns):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 5.0
    for ns in names:
        while pids_in(ns) and time.monotonic() < deadline:
            time.sleep(0.05)
        done = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True)
        if done.returncode != 0 and (NETNS_DIR / ns).exists():
            problems.append(f"{ns}: {done.stderr.strip()}")
    return problems


def stray_links() -> list[str]:
    """Interfaces in this (root) namespace named like the lab's: there should
    be none (cables are made inside the lab's namespaces)."""
    out = run(["ip", "-o", "link", "show"], check=False)
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]
    return [n for n in names if n.startswith(PREFIX)]


def clean_leftovers() -> list[str]:
    """Remove every lab namespace and stray lab interface; return their names."""
    names = lab_namespaces()
    # Hosts first, the bridge's namespace last (its ports go with the hosts).
    names.sort(key=lambda n: n == NET_NS)
    problems = remove_namespaces(names)
    strays = stray_links()
    for link in strays:
        run(["ip", "link", "del", link], check=False)
    if problems:
        raise LabError("could not remove " + "; ".join(problems))
    return names + strays


@contextmanager
def lab_lock(wait: float) -> Iterator[None]:
    """Hold the machine's lab lock (one lab at a time: a lab cleans up by
    name); wait up to ``wait`` seconds for another run to finish."""
    handle: IO[str] = open(LOCK_PATH, "a+")
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "?"
                    raise LabError(f"another herd lab is running (pid {holder}; {LOCK_PATH})") from None
                time.sleep(0.5)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()
