"""A running lab: the network, one ``redis-server`` and one node per host,
and what the lab reads from them.

Processes are started with ``ip netns exec <host> ...`` in a session of
their own, so a pid (and its process group) is all it takes to signal or
kill one. Everything the lab reads goes over sockets made inside a lab
namespace: a host's Redis on that host's loopback, a node's admin endpoint
from the observer (as ``herd status`` would).
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from herd.clock import CLOCK_OFFSET_ENV
from herd.tools.harness import ChildProcess
from herd.tools.lab import netns, plan, rules
from herd.tools.lab.plan import (
    ADMIN_PORT,
    CLIENT_PORT,
    OPS_NS,
    PLACES_KEY_ENV,
    REDIS_PORT,
    SECRET_ENV,
    Edge,
    Host,
    LabError,
)
from herd.tools.resp import Resp, encode_command, read_reply

PACKAGE_ROOT = Path(__file__).resolve().parents[3]  # where `python -m herd` is found
KEY_PREFIX = b"herd:"
CLIENT_KEY = KEY_PREFIX + b"client:"
SUMMARY_KEY = KEY_PREFIX + b"summary"
READ_TIMEOUT = 2.0  # seconds for a Redis or HTTP read from the lab
HTTP_TIMEOUT = 2.0

Events = Callable[[str], None]


class NsResp(Resp):
    """A Resp client over a socket made inside a host's namespace."""

    def __init__(self, host: Host, timeout: float = READ_TIMEOUT):  # noqa: D107 (no super(): no connect here)
        self.sock = netns.connect_in(host.netns, "127.0.0.1", REDIS_PORT, timeout)
        self.file = self.sock.makefile("rb")


class NsProcess(ChildProcess):
    """A command run inside network namespace ``ns`` (``ip netns exec``, which
    execs it: the pid is the command's) by the process harness: a session of
    its own, output appended to its log, a mark in the log at each start,
    killed with its owner. It counts as ready as soon as it runs: whether it
    serves is asked from inside the lab (Lab), never from this namespace."""

    def __init__(self, label: str, ns: str, argv: list[str], log_path: Path, env: Mapping[str, str]):
        super().__init__(label, netns.in_ns(ns, *argv), log_path, env=env, cwd=PACKAGE_ROOT, mark_starts=True)
        self.ns = ns

    @property
    def running_pid(self) -> int | None:
        """Its pid while it runs, else None."""
        return self.proc.pid if self.alive() and self.proc is not None else None


def rss_kb(pid: int | None) -> int:
    """Resident set size of ``pid`` in KiB (0 when it is gone)."""
    if pid is None:
        return 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def cpu_seconds(pid: int | None) -> float:
    """User plus system CPU time ``pid`` has used, in seconds (0 when it is gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text: {name{labels}: value} (comments left out)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                continue
    return out


class Lab:
    """``count`` hosts linked by ``edges`` under ``root`` (logs, Redis data,
    the config). ``build()`` makes the network, ``start()`` the processes,
    ``teardown()`` removes all of it; a Lab is used once."""

    def __init__(self, root: Path, count: int, edges: Sequence[Edge], events: Events,
                 appendfsync: str = "always"):
        self.root = root
        self.hosts = plan.hosts(count)
        self.by_name = {h.name: h for h in self.hosts}
        self.edges = list(edges)
        self.events = events
        self.config = root / "herd.toml"
        # Added to this process's environment (harness.child_env); an offset of
        # ours must not shift every node's clock.
        self.env = {SECRET_ENV: secrets.token_hex(16), PLACES_KEY_ENV: "unused", CLOCK_OFFSET_ENV: ""}
        self.redis: dict[Host, NsProcess] = {}
        self.nodes: dict[Host, NsProcess] = {}
        self._resp: dict[Host, NsResp] = {}
        self.ready_seconds = 0.0  # from building the network to every link up
        exe = "redis-server"
        for host in self.hosts:
            home = root / host.name
            (home / "redis").mkdir(parents=True, exist_ok=True)
            self.redis[host] = NsProcess(f"{host.name} redis", host.netns, [
                exe, str(PACKAGE_ROOT / "ops" / "redis" / "redis.conf"), "--port", str(REDIS_PORT),
                "--bind", "127.0.0.1", "--dir", str(home / "redis"), "--appendonly", "yes",
                "--appendfsync", appendfsync, "--save", "", "--daemonize", "no",
                "--logfile", str(home / "redis" / "redis.log")], home / "redis" / "redis.out", self.env)
            # Its state directory (the access log) is its host's, in the lab's directory.
            self.nodes[host] = NsProcess(host.name, host.netns, [
                sys.executable, "-m", "herd", "serve", host.name, "--config", str(self.config)],
                home / "herd.log", {**self.env, "STATE_DIRECTORY": str(home)})

    # -- building and tearing down ----------------------------------------------

    def build(self) -> None:
        """The network, each host's counter table, and the config file."""
        netns.build_network(self.hosts)
        for host in self.hosts:
            netns.run(netns.in_ns(host.netns, "nft", "-f", "-"), rules.meter_script())
        self.config.write_text(plan.render_config(self.hosts, self.edges))

    def teardown(self) -> list[str]:
        """Kill every process (by pid, then whatever ``ip netns pids`` still
        finds) and remove every namespace of the lab; what could not be removed."""
        for resp in self._resp.values():
            resp.close()
        self._resp.clear()
        for proc in [*self.nodes.values(), *self.redis.values()]:
            proc.kill()
        names = [h.netns for h in self.hosts] + [plan.OPS_NS, plan.NET_NS]
        return netns.remove_namespaces([n for n in names if n in netns.lab_namespaces()])

    # -- processes ----------------------------------------------------------------

    def start(self) -> None:
        self.start_redis(self.hosts)
        self.start_nodes(self.hosts)

    def start_redis(self, hosts: Iterable[Host]) -> None:
        hosts = list(hosts)
        for host in hosts:
            self.redis[host].start(wait=False)
        for host in hosts:
            self._wait(functools.partial(self.redis_ready, host), f"{host.name}'s redis-server",
                       self.redis[host])

    def start_nodes(self, hosts: Iterable[Host], extra_env: Mapping[str, str] | None = None) -> None:
        """Start nodes and wait until each accepts clients (seen from the observer)."""
        hosts = list(hosts)
        for host in hosts:
            self.nodes[host].start(wait=False, env=extra_env)
        timeout = 20.0 + 2.0 * len(hosts)  # 25 Python processes starting at once on 2 cores
        for host in hosts:
            self._wait(functools.partial(self.listening, host), f"node {host.name} listening",
                       self.nodes[host], timeout)

    def _wait(self, ready: Callable[[], bool], what: str, proc: NsProcess, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if not proc.alive():
                raise LabError(f"{proc.label} exited while waiting for {what}; see {proc.log_path}")
            if time.monotonic() > deadline:
                raise LabError(f"timed out after {timeout:g} s waiting for {what}")
            time.sleep(0.05)

    def listening(self, host: Host) -> bool:
        try:
            netns.connect_in(OPS_NS, host.address, CLIENT_PORT, 0.5).close()
            return True
        except OSError:
            return False

    def wait_links(self, timeout: float) -> bool:
        """Until every node's /healthz lists all its neighbours linked."""
        wanted = {h: {f"h{p}" for p in peers} for h, peers in
                  ((self.hosts[i - 1], peers) for i, peers in plan.neighbours(self.edges).items())}
        deadline = time.monotonic() + timeout
        pending = dict(wanted)
        while pending:
            for host in list(pending):
                health = self.healthz(host)
                if health is not None and pending[host] <= set(health.get("links_up", [])):
                    del pending[host]
            if not pending:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    # -- faults ---------------------------------------------------------------------

    def apply(self, fault: rules.Plan) -> None:
        """Put a fault's nft rules in place (each host's fault table replaced),
        on every host at once: one after the other, the last of 25 hosts
        would change a second or two after the first."""
        netns.run_all([(netns.in_ns(host.netns, "nft", "-f", "-"), script)
                       for host, script in rules.scripts(fault).items()])

    def heal_network(self) -> None:
        """Remove every host's fault rules, at once; returns when all are gone."""
        netns.run_all([(netns.in_ns(host.netns, "nft", "-f", "-"), rules.heal_script())
                       for host in self.hosts])

    # -- reading ----------------------------------------------------------------------

    def resp(self, host: Host) -> NsResp:
        """The lab's connection to ``host``'s Redis (made again after a failure)."""
        conn = self._resp.get(host)
        if conn is None:
            conn = self._resp[host] = NsResp(host)
        return conn

    def redis_call(self, host: Host, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """A pipeline on ``host``'s Redis; OSError/RuntimeError when it fails."""
        try:
            return self.resp(host).pipeline(commands)
        except (OSError, RuntimeError):
            self._drop(host)
            raise

    def _drop(self, host: Host) -> None:
        """Forget the connection to ``host``'s Redis (the next call makes a new one)."""
        conn = self._resp.pop(host, None)
        if conn is not None:
            conn.close()

    def redis_ready(self, host: Host) -> bool:
        try:
            return isinstance(self.redis_call(host, [("DBSIZE",)])[0], int)
        except (OSError, RuntimeError):
            return False

    def summaries(self) -> dict[Host, tuple[bytes, bytes] | None]:
        """Every host's summary, read at nearly the same moment: the command
        goes to every Redis before any reply is read."""
        question = encode_command("HMGET", SUMMARY_KEY, "clients", "digest")
        asked: list[Host] = []
        out: dict[Host, tuple[bytes, bytes] | None] = dict.fromkeys(self.hosts)
        for host in self.hosts:
            try:
                self.resp(host).sock.sendall(question)
                asked.append(host)
            except OSError:
                self._drop(host)
        for host in asked:
            try:
                items = read_reply(self.resp(host).file)
                out[host] = (items[0] or b"0", items[1] or b"")
            except (OSError, RuntimeError):
                self._drop(host)
        return out

    def agree(self) -> bool:
        """Every host's Redis readable and all summaries equal."""
        seen = set(self.summaries().values())
        return len(seen) == 1 and None not in seen

    def records(self, host: Host) -> dict[bytes, tuple[bytes, bytes, bytes]]:
        """Every client's (time, location, AT line) in ``host``'s Redis."""
        keys = self.resp(host).scan(CLIENT_KEY + b"*")
        values = self.redis_call(host, [("HMGET", k, "time", "location", "at") for k in keys]) if keys else []
        return {k[len(CLIENT_KEY):]: tuple(v) for k, v in zip(keys, values, strict=True)}  # type: ignore[misc]

    def http_get(self, host: Host, path: str) -> tuple[int, bytes]:
        """GET ``path`` from ``host``'s admin endpoint, from the observer."""
        conn = http.client.HTTPConnection(host.address, ADMIN_PORT, timeout=HTTP_TIMEOUT)
        conn.sock = netns.connect_in(OPS_NS, host.address, ADMIN_PORT, HTTP_TIMEOUT)
        try:
            conn.request("GET", path)
            answer = conn.getresponse()
            return answer.status, answer.read()
        finally:
            conn.close()

    def healthz(self, host: Host) -> dict[str, Any] | None:
        try:
            _, body = self.http_get(host, "/healthz")
            return json.loads(body)  # type: ignore[no-any-return]
        except (OSError, ValueError, http.client.HTTPException):
            return None

    def metrics(self, host: Host, tries: int = 3) -> dict[str, float] | None:
        """``host``'s /metrics; None when it could not be read (``tries`` times:
        a node under load may miss one read's timeout)."""
        for attempt in range(tries):
            try:
                status, body = self.http_get(host, "/metrics")
                if status == 200:
                    return parse_metrics(body.decode())
            except (OSError, http.client.HTTPException):
                pass
            if attempt + 1 < tries:
                time.sleep(0.2)
        return None

    def peer_tx(self, host: Host) -> tuple[int, int]:
        """(packets, bytes) ``host`` has sent on peer links (its nft counter)."""
        out = netns.run(netns.in_ns(host.netns, "nft", "-j", "list", "counter", "inet", rules.METER_TABLE,
                                    rules.PEER_COUNTER))
        for item in json.loads(out)["nftables"]:
            if "counter" in item:
                return int(item["counter"]["packets"]), int(item["counter"]["bytes"])
        raise LabError(f"{host.name}: no {rules.PEER_COUNTER} counter")

    def wire_total(self) -> tuple[int, int]:
        """(packets, bytes) sent on peer links by all hosts together."""
        totals = [self.peer_tx(h) for h in self.hosts]
        return sum(p for p, _ in totals), sum(b for _, b in totals)

    def cpu_total(self) -> float:
        """CPU seconds used by every node and redis-server of the lab so far."""
        return sum(cpu_seconds(p.running_pid) for p in [*self.nodes.values(), *self.redis.values()])

    def memory_kb(self, host: Host) -> tuple[int, int]:
        """(node RSS, redis-server RSS) in KiB."""
        return rss_kb(self.nodes[host].running_pid), rss_kb(self.redis[host].running_pid)

    def observe(self, command: str) -> subprocess.CompletedProcess[str]:
        """Run ``herd <command> --config <the lab's>`` from the observer namespace."""
        argv = netns.in_ns(OPS_NS, sys.executable, "-m", "herd", *command.split(),
                           "--config", str(self.config))
        return subprocess.run(argv, cwd=PACKAGE_ROOT, capture_output=True, text=True, timeout=60)
