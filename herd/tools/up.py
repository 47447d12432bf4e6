"""``herd up``: run a whole herd on this machine until Ctrl-C or SIGTERM.

One persistent redis-server per distinct local Redis port (data under
``<state>/<Node>/redis``, ``Node`` being the first node by name that uses it),
then every node as ``python -m herd serve``; node output is relayed to our
stdout, each line prefixed with the node's name, and appended to
``<state>/<Node>/herd.log``; Redis's to ``<state>/<Node>/redis/redis.log``.
Both are rotated by size (LOG_MAX_BYTES, LOG_KEEP old files); each node's
access log is ``<state>/<Node>/access.log`` unless the config says otherwise
(its state directory, ``$STATE_DIRECTORY``, is ``<state>/<Node>``). A process
that dies is restarted a second later.

This is a development supervisor, not the serving path: plain subprocesses and
threads, no reactor.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from config.loader import check_can_serve, load_config
from config.schema import HerdConfig, host_port, is_loopback, listen_host
from herd.logs import LEVELS, json_record, open_access_log, timestamp
from herd.peer.tls import tls_for
from herd.rotating import RotatingFile
from herd.tools.harness import (
    REDIS_CONF,
    ChildProcess,
    HarnessError,
    NodeProcess,
    RedisProcess,
    describe_exit,
    port_open,
    redis_ping,
    redis_server,
    stop_all,
)

REDIS_START_TIMEOUT = 10.0  # seconds for a new redis-server to answer PING
NODE_STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL for a node
# Redis writes a final snapshot on SIGTERM; SIGKILL after this long loses
# nothing acknowledged anyway (the AOF is fsynced before every reply).
REDIS_STOP_TIMEOUT = 30.0
RESTART_DELAY = 1.0  # seconds between an unexpected exit and the restart
LOCK_FILE = "herd-up.lock"
CONFIG_ERROR = 2  # the exit status of a node (herd serve) refused by its configuration
# herd.log and redis.log: rotated at this size, this many old files kept.
LOG_MAX_BYTES = 16 << 20
LOG_KEEP = 3


@dataclass(frozen=True)
class LocalRedis:
    """A redis-server that ``herd up`` runs: one per distinct local Redis port."""

    port: int
    hosts: tuple[str, ...]  # addresses to bind: every local host naming this port
    owner: str  # first node by name using it; its data live in <state>/<owner>/redis
    password: str | None = None


def plan_redis_servers(config: HerdConfig) -> list[LocalRedis]:
    """The Redis servers to start for ``config``, in the order of their owners'
    names: one per distinct port among the nodes whose Redis host is local
    (loopback or ``localhost``). Nodes with a remote Redis get none."""
    users: dict[int, list[str]] = {}
    for name in sorted(config.nodes):
        address = config.nodes[name].redis
        if is_loopback(address.host):
            users.setdefault(address.port, []).append(name)
    plans = []
    for port, names in users.items():
        first = config.nodes[names[0]].redis
        hosts = sorted({listen_host(config.nodes[n].redis.host) for n in names})
        plans.append(LocalRedis(port, tuple(hosts), names[0], first.password))
    return plans


def shared_keyspace(config: HerdConfig) -> str | None:
    """Why two nodes would share one Redis database and prefix on this machine
    (a config may allow it for nodes on separate hosts; herd up runs them all
    here), or None."""
    users: dict[tuple[int, int, str], str] = {}
    for name in sorted(config.nodes):
        node = config.nodes[name]
        if is_loopback(node.redis.host):
            key = (node.redis.port, node.redis.db, node.prefix)
            if key in users:
                return (f"nodes {users[key]} and {name} would share Redis port {key[0]}, database {key[1]}, "
                        f"prefix {key[2]!r} on this machine (herd up runs every node here)")
            users[key] = name
    return None


class Output:
    """Our stdout, shared by the relay threads: whole lines, one writer at a
    time. With ``json_lines`` (``--log-format json``) every line is one JSON
    object: the nodes' own as they are (each names its node), ours and any
    other line of a node (a crash's traceback) made into one, with the
    fields of the nodes' events (time, node, level, message): ``say``'s
    level, and "error" for a node's line that is not its JSON (a traceback)."""

    def __init__(self, width: int, json_lines: bool = False, level: str = "info") -> None:
        self.width = width  # of the name column
        self.json_lines = json_lines
        self._least = LEVELS[level]  # ours below it are left out (--log-level, as the nodes')
        self._lock = threading.Lock()

    def say(self, text: str, level: str = "info") -> None:
        if LEVELS[level] >= self._least:
            self._write(self._line(None, f"herd up: {text}", level))

    def _line(self, label: str | None, text: str, level: str = "error") -> str:
        """``text``, a line of node ``label`` (None: ours), as shown; ``level``
        in JSON, for ours and a node's that is not JSON."""
        if not self.json_lines:
            return f"{text}\n" if label is None else f"{label:<{self.width}} | {text}\n"
        if label is not None and text.startswith("{"):
            try:
                if isinstance(json.loads(text), dict):
                    return f"{text}\n"
            except ValueError:
                pass
        return json.dumps(json_record(timestamp(time.time()), label, level, text), ensure_ascii=False) + "\n"

    def relay(self, label: str, stream: IO[bytes], log_path: Path, echo: bool = True) -> None:
        """Copy ``stream`` line by line to ``log_path`` (rotated: LOG_MAX_BYTES,
        LOG_KEEP) and, with ``echo``, prefixed with ``label`` to stdout, until
        end of file. Should the log file fail, the lines still reach stdout."""
        log: RotatingFile | None = None
        try:
            log = RotatingFile(log_path, LOG_MAX_BYTES, LOG_KEEP)
        except OSError as err:
            self.say(f"{label}: cannot open {log_path} ({err.strerror}); its output is not kept", "error")
        with stream:
            for raw in stream:
                log = _append(log, raw, label, self)
                if echo:
                    self._write(self._line(label, raw.decode(errors="replace").rstrip("\r\n")))
        if log is not None:
            log.close()

    def _write(self, text: str) -> None:
        with self._lock:
            try:
                sys.stdout.write(text)
                sys.stdout.flush()
            except OSError:
                pass  # stdout gone (closed pipe): keep draining children regardless


def _append(log: RotatingFile | None, raw: bytes, label: str, out: Output) -> RotatingFile | None:
    """Append ``raw`` to ``log``; the log, or None once it failed (said once)."""
    if log is None:
        return None
    try:
        log.write(raw)
        log.flush()
        return log
    except (OSError, ValueError) as err:
        out.say(f"{label}: cannot write {log.path} ({err}); no more of its output goes there", "error")
        return None


@dataclass
class Child:
    """A supervised process (a node, or a Redis) with its restart bookkeeping.
    Its output (a pipe) is written to its log, rotated, by ``Output``; with
    ``echo`` (nodes) also to our stdout."""

    process: ChildProcess
    echo: bool = True
    relayer: threading.Thread | None = None
    restarts: int = 0
    restart_at: float | None = None
    node: bool = False  # a node: not restarted after a configuration error
    given_up: bool = False  # it was not restarted

    @property
    def label(self) -> str:
        return self.process.label

    def start(self, out: Output) -> None:
        # In a session of its own (the harness does that): a terminal's Ctrl-C
        # reaches only us, and we stop the children in order (nodes before the
        # Redis they still need). Should we be killed outright, each child gets
        # SIGTERM from the kernel, so no herd is left running without us.
        self.process.start(wait=False)
        stream = self.process.stdout
        if stream is not None:
            self.relayer = threading.Thread(target=out.relay, daemon=True,
                                            args=(self.label, stream, self.process.log_path, self.echo))
            self.relayer.start()

    def tend(self, now: float, out: Output) -> None:
        """Notice an unexpected exit; restart ``RESTART_DELAY`` seconds after it,
        unless a node exited with a configuration error (2: its config, or a
        file or variable it names, changed since herd up checked it), which
        would fail the same way every second."""
        if self.given_up:
            return
        if self.restart_at is None:
            code = self.process.exit_code
            if self.node and code == CONFIG_ERROR:
                self.given_up = True
                out.say(f"{self.label} {describe_exit(code)}, a configuration error; not restarting it "
                        "(fix it, then run herd up again)", "error")
            elif code is not None:
                self.restart_at = now + RESTART_DELAY
                out.say(f"{self.label} {describe_exit(code)}; restarting in {RESTART_DELAY:g} s", "error")
        elif now >= self.restart_at:
            self.restart_at = None
            self.restarts += 1
            self.start(out)
            out.say(f"{self.label} restarted (restart {self.restarts})", "warning")


def run_up(config_path: str, state_dir: str, log_args: Sequence[str] = (),
           config_ok: Callable[[], None] = lambda: None) -> int:
    """Run the herd in ``config_path`` until SIGINT/SIGTERM (each node's event
    log as ``log_args``, ``herd serve`` options, say); return the exit status:
    0 after a requested stop, 1 when the herd could not start. ConfigError
    propagates (the CLI reports it); ``config_ok`` is called once every check
    passed, before anything starts (the CLI says which file it used)."""
    config = load_config(config_path, need_secret=True)
    for name in sorted(config.nodes):
        check_can_serve(config, name)
        tls_for(config, name)
    problem = shared_keyspace(config)
    if problem:
        return fail(problem)
    redises = plan_redis_servers(config)
    if redises:
        try:
            redis_server()
        except HarnessError as err:
            return fail(str(err))
        if not REDIS_CONF.is_file():
            return fail(f"{REDIS_CONF} not found (herd up runs from a source checkout)")
    state = Path(state_dir)
    lock = lock_state_dir(state)
    if isinstance(lock, str):
        return fail(lock)
    for name in sorted(config.nodes):  # (in the state directory by default: once it is ours)
        access = open_access_log(config, name, node_environ(state, name))  # as the node will
        if access is not None:
            access.close()
    config_ok()
    problem = port_conflict(config, redises)
    if problem:
        return fail(problem)
    out = Output(width=max(len(name) for name in config.nodes),
                 json_lines=_log_option(log_args, "--log-format", "text") == "json",
                 level=_log_option(log_args, "--log-level", "info"))
    # The Redis servers hold the lock too: should we die before them, no other
    # herd up gets the directory while they still write to it.
    redis_children = [redis_child(r, state, lock.fileno()) for r in redises]
    nodes = [node_child(name, config, config_path, log_args, state) for name in sorted(config.nodes)]
    stop = stop_on_signals()
    try:
        return start_and_supervise(config, redis_children, nodes, state, stop, out)
    finally:
        stop_children(nodes, NODE_STOP_TIMEOUT, out)
        stop_children(redis_children, REDIS_STOP_TIMEOUT, out)
        out.say("stopped")


def lock_state_dir(state: Path) -> IO[str] | str:
    """Hold ``<state>/herd-up.lock`` for as long as this process runs (the
    returned file), so that two ``herd up`` never share Redis data and logs;
    or say why not."""
    try:
        state.mkdir(parents=True, exist_ok=True)
        lock = open(state / LOCK_FILE, "a+")  # noqa: SIM115 (held until exit)
    except OSError as err:
        return f"cannot use state directory {state}: {err.strerror}"
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        return f"state directory {state} is in use by another herd up (pid {holder})"
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def fail(message: str) -> int:
    print(f"herd up: {message}", file=sys.stderr)
    return 1


def port_conflict(config: HerdConfig, redises: Sequence[LocalRedis]) -> str | None:
    """Why the herd cannot start here (a Redis or node port already taken), or None."""
    for r in redises:
        if port_open(r.port, r.hosts[0], timeout=0.5):
            what = "a Redis answering PING" if redis_ping(r.port, r.hosts[0]) is not None else "something"
            return (f"port {r.port} (Redis for {r.owner}) is already in use by {what}; "
                    "not touching it (another herd up or redis-server running?)")
    for name in sorted(config.nodes):
        node = config.nodes[name]
        ports = [("client", node.host, node.port), ("peer", node.host, node.peer_port)]
        if node.admin is not None:
            ports.append(("admin", *node.admin))
        for what, host, port in ports:
            if port_open(port, host, timeout=0.5):
                return f"port {port} (node {name}'s {what} port) is already in use (another herd up running?)"
    return None


def redis_child(redis: LocalRedis, state: Path, lock_fd: int) -> Child:
    # The shipped config as it is: AOF with appendfsync always, RDB snapshots on.
    return Child(RedisProcess(state / redis.owner / "redis", redis.port, bind=redis.hosts,
                              password=redis.password, label=f"{redis.owner} redis", pass_fds=(lock_fd,),
                              pipe=True), echo=False)


def _log_option(log_args: Sequence[str], option: str, default: str) -> str:
    """The value of ``option`` in ``log_args`` (``herd serve`` options)."""
    args = list(log_args)
    return args[args.index(option) + 1] if option in args[:-1] else default


def node_child(name: str, config: HerdConfig, config_path: str, log_args: Sequence[str],
               state: Path) -> Child:
    node = config.nodes[name]
    return Child(NodeProcess(name, config_path, node.port, state / name / "herd.log", host=node.host,
                             args=list(log_args), pipe=True, label=name, env=node_environ(state, name)),
                 node=True)


def node_environ(state: Path, name: str) -> dict[str, str]:
    """What herd up adds to node ``name``'s environment: its state directory,
    where its access log goes unless the config says otherwise."""
    return {"STATE_DIRECTORY": str((state / name).resolve())}


def stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM (instead of KeyboardInterrupt)."""
    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return stop


def start_and_supervise(config: HerdConfig, redis_children: Sequence[Child], nodes: Sequence[Child],
                        state: Path, stop: threading.Event, out: Output) -> int:
    for child in redis_children:
        child.start(out)
    for child in redis_children:
        try:
            child.process.wait_ready(REDIS_START_TIMEOUT, stop)
        except HarnessError as err:
            return fail(str(err))
    if stop.is_set():
        return 0
    for node in nodes:
        node.start(out)
    print_banner(config, state, out)
    children = [*redis_children, *nodes]
    while not stop.wait(0.2):
        now = time.monotonic()
        for child in children:
            child.tend(now, out)
    return 0


def print_banner(config: HerdConfig, state: Path, out: Output) -> None:
    for name in sorted(config.nodes):
        node = config.nodes[name]
        redis = node.redis
        where = "" if is_loopback(redis.host) else " (remote, not started)"
        out.say(f"{name:<{out.width}}  {host_port(node.host, node.port)}  "
                f"redis {host_port(redis.host, redis.port)}{where}  log {state / name / 'herd.log'}")
    out.say(f"{len(config.nodes)} nodes running; Ctrl-C stops the herd")


def stop_children(children: Sequence[Child], timeout: float, out: Output) -> None:
    """SIGTERM every live child, wait up to ``timeout`` s in all, SIGKILL the rest."""
    stop_all([c.process for c in children], timeout,
             overdue=lambda p: out.say(f"{p.label} did not stop within {timeout:g} s; killing it", "warning"))
    for child in children:
        if child.relayer is not None:
            child.relayer.join(timeout=2.0)  # let its last lines (shutdown logs) through
