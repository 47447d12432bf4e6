"""The one process harness of herd's tools and tests: free ports, waits, and
the processes of a herd on this machine.

- ``free_port(s)``, ``port_open``, ``wait_until``: ports and polling.
- ``ChildProcess``: one child with its log, started and stopped the same way
  everywhere; ``RedisProcess`` (a real redis-server with the shipped
  ops/redis/redis.conf) and ``NodeProcess`` (``python -m herd serve``) know
  when they are ready. ``stop_all`` stops several at once.
- ``LocalHerd``: a throwaway herd under one directory, every node with its own
  redis-server on free loopback ports; it writes the config, starts Redis
  first and the nodes then, and stops everything when it is left.

Used by ``herd up`` (which runs the user's config: fixed ports, no
LocalHerd), ``herd bench``, ``herd chaos`` and the tests. Blocking, standard
library only (and herd.tools.resp): importing it starts no reactor.
"""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Self

from herd.tools.resp import Arg, Resp

REPO = Path(__file__).resolve().parents[2]  # where the herd package was imported from
REDIS_CONF = REPO / "ops" / "redis" / "redis.conf"
START_TIMEOUT = 20.0  # seconds for a process to become ready
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL
PORT_FLOOR = 20000  # free_port picks from here up to the ephemeral range


class HarnessError(Exception):
    """A process could not be started, or did not become ready; the message
    names it and, where there is one, its log."""


class WaitTimeout(HarnessError, TimeoutError):
    """A wait ran out of time."""


# -- ports and waits ------------------------------------------------------------

_handed_out: set[int] = set()
_chooser = random.SystemRandom()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago, never the same one
    twice in this process (servers started together must not race for one).
    It lies below the ephemeral range where there is room, so that a process
    restarted on it does not find it taken by the local end of some outgoing
    connection."""
    low = _ephemeral_low()
    for _ in range(500):
        wanted = _chooser.randrange(PORT_FLOOR, low) if low > PORT_FLOOR + 1000 else 0
        port = _bindable(host, wanted)
        if port is not None and port not in _handed_out:
            _handed_out.add(port)
            return port
    raise HarnessError(f"found no free TCP port on {host}")


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    return [free_port(host) for _ in range(n)]


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(host: str, port: int) -> int | None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError:
            return None
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition",
               every: float = 0.01, stop: threading.Event | None = None) -> bool:
    """Poll ``predicate`` every ``every`` s: True once it is true, False as soon
    as ``stop`` is set; WaitTimeout naming ``what`` after ``timeout`` s.
    Exceptions from ``predicate`` propagate."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if stop is not None and stop.is_set():
            return False
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}")
        if stop is not None:
            stop.wait(every)
        else:
            time.sleep(every)
    return True


def redis_ping(port: int, host: str = "127.0.0.1", password: str | None = None,
               timeout: float = 1.0) -> bytes | None:
    """What a Redis at ``host:port`` answers to PING (after AUTH with
    ``password``): b"PONG", or an error reply's text such as b"LOADING ..." or
    b"NOAUTH ..."; None when nothing there answers like Redis."""
    try:
        with Resp(port, timeout=timeout, host=host, password=password) as redis:
            reply = redis.call("PING")
    except RuntimeError as err:
        return str(err).encode()
    except (OSError, ValueError):
        return None
    return reply if isinstance(reply, bytes) else b""


# -- processes ----------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment for a child, then ``extra``: without
    NOTIFY_SOCKET (under systemd, readiness is ours to report, not a child's),
    Python output unbuffered (log lines reach the log as written), and in a
    source checkout this checkout first on PYTHONPATH (the child runs the code
    we run)."""
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env["PYTHONUNBUFFERED"] = "1"
    if (REPO / "pyproject.toml").is_file():
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


@functools.cache
def die_with_parent() -> tuple[str, ...]:
    """The command prefix that makes a child get SIGTERM when the thread that
    started it dies (setpriv --pdeathsig, util-linux 2.33 and later), so no
    process outlives an owner killed outright; empty where there is none."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return ()
    prefix = (setpriv, "--pdeathsig", "TERM", "--")
    works = subprocess.run([*prefix, "true"], capture_output=True).returncode == 0
    return prefix if works else ()


def describe_exit(code: int | None) -> str:
    if code is None:
        return "has not exited"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class ChildProcess:
    """A child process, started with the same command every time.

    It runs in a session of its own, so a terminal's Ctrl-C reaches only its
    owner, which then stops its children in order; signals go to its whole
    process group (a redis-server's fork children too). Its stdout and stderr
    are appended to ``log_path``; with ``pipe``, stdout (stderr included) is
    left in ``stdout`` for the owner to read and log. With ``port`` it is
    ready once that port accepts connections, else as soon as it runs.
    """

    def __init__(self, label: str, argv: Sequence[str], log_path: Path, *,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None,
                 port: int | None = None, host: str = "127.0.0.1", pipe: bool = False,
                 pass_fds: Sequence[int] = (), mark_starts: bool = False, wrapper: Sequence[str] = ()):
        self.label = label
        self.argv = [*wrapper, *argv]  # wrapper: a command that runs it (valgrind ...: herd bench)
        self.log_path = log_path
        self.env = dict(env or {})
        self.cwd = cwd
        self.port = port
        self.host = host
        self.pipe = pipe
        self.pass_fds = tuple(pass_fds)
        self.mark_starts = mark_starts  # write a line into the log before each start
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, wait: bool = True, *, env: Mapping[str, str] | None = None,
              ignore_sigint: bool = False, timeout: float = START_TIMEOUT) -> Self:
        """Start it with ``env`` added to its environment for this start;
        ``ignore_sigint``: as a shell's background job inherits it. With
        ``wait``, return once it is ready (see ``wait_ready``). HarnessError
        when it is running already."""
        if self.alive():
            raise HarnessError(f"{self.label} is running already")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with open(self.log_path, "ab") as log:
            if self.mark_starts:
                log.write(f"=== start {self.starts} of {self.label} at {utc_stamp()}\n".encode())
                log.flush()
            self.proc = subprocess.Popen(
                [*die_with_parent(), *self.argv], cwd=self.cwd, env=child_env(**{**self.env, **(env or {})}),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE if self.pipe else log,
                stderr=subprocess.STDOUT, start_new_session=True, pass_fds=self.pass_fds,
                preexec_fn=_ignore_sigint if ignore_sigint else None)
        if wait:
            self.wait_ready(timeout)
        return self

    def ready(self) -> bool:
        return self.port is None or port_open(self.port, self.host)

    def ready_means(self) -> str:
        """What ``ready`` waits for, as in "did not <this> within 5 s"."""
        return f"accept connections on port {self.port}" if self.port else "start"

    def wait_ready(self, timeout: float = START_TIMEOUT, stop: threading.Event | None = None) -> bool:
        """True once it is ready; False when ``stop`` is set first. HarnessError
        when it exits first, WaitTimeout after ``timeout`` s; both name its log."""
        def check() -> bool:
            if not self.alive():
                raise HarnessError(f"{self.label} {describe_exit(self.exit_code)} at start-up; "
                                   f"see {self.log_path}")
            return self.ready()

        try:
            return wait_until(check, timeout, self.label, every=0.02, stop=stop)
        except WaitTimeout:
            raise WaitTimeout(f"{self.label} did not {self.ready_means()} within {timeout:g} s; "
                              f"see {self.log_path}") from None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise HarnessError(f"{self.label} was never started")
        return self.proc.pid

    @property
    def stdout(self) -> IO[bytes] | None:
        """With ``pipe``: its output, for the owner to read until end of file."""
        return self.proc.stdout if self.proc is not None else None

    @property
    def exit_code(self) -> int | None:
        """Its exit status (negative: killed by that signal); None while it runs
        or before it was started."""
        return self.proc.poll() if self.proc is not None else None

    def alive(self) -> bool:
        proc = self.proc  # read once: other threads ask while a restart replaces it
        return proc is not None and proc.poll() is None

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to its process group, if it runs."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass  # exited meanwhile

    def pause(self) -> None:
        self.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.send_signal(signal.SIGCONT)

    def wait(self, timeout: float) -> int | None:
        """Its exit status once it exits within ``timeout`` s, else None."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> int | None:
        """``kill -9`` it (its whole group) and reap it; its exit status."""
        self.send_signal(signal.SIGKILL)
        return self.wait(10.0)

    def stop(self, timeout: float = STOP_TIMEOUT, sig: int = signal.SIGTERM) -> int | None:
        """Send ``sig``, wait up to ``timeout`` s, then SIGKILL; its exit status."""
        stop_all([self], timeout, sig)
        return self.exit_code

    def log(self, start: int = 0) -> str:
        """Its log from byte ``start`` on ("" while there is none)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(start)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0


def stop_all(processes: Iterable[ChildProcess], timeout: float = STOP_TIMEOUT, sig: int = signal.SIGTERM,
             overdue: Callable[[ChildProcess], None] | None = None) -> None:
    """Send ``sig`` to every one that runs (and SIGCONT, should it be paused),
    wait up to ``timeout`` s for all together, then SIGKILL each still running
    (after telling ``overdue``). With ``timeout`` 0, SIGKILL at once. All are
    reaped on return."""
    running = [p for p in processes if p.alive()]
    if timeout <= 0:
        for p in running:
            p.kill()
        return
    for p in running:
        p.send_signal(sig)
        p.resume()  # a paused process could not act on ``sig``
    deadline = time.monotonic() + timeout
    for p in running:
        if p.wait(max(0.0, deadline - time.monotonic())) is None:
            if overdue is not None:
                overdue(p)
            p.kill()


def utc_stamp() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def redis_server() -> str:
    """The redis-server executable; HarnessError when it is not installed."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise HarnessError("redis-server not found; run ops/setup.sh")
    return exe


class RedisProcess(ChildProcess):
    """A real redis-server: ``conf`` (the shipped ops/redis/redis.conf: AOF,
    appendfsync always), then port, bind addresses and data directory (AOF,
    RDB, redis.log), and where given: ``appendfsync``, ``snapshots=False``
    (no RDB saves) and a password. Ready once it answers PING (not while it
    loads its AOF; NOAUTH counts: it wants a password its ``conf`` sets). The
    data directory survives ``kill``/``start``."""

    def __init__(self, data_dir: Path, port: int | None = None, *, bind: Sequence[str] = ("127.0.0.1",),
                 appendfsync: str | None = None, snapshots: bool = True, password: str | None = None,
                 conf: Path = REDIS_CONF, label: str | None = None, pass_fds: Sequence[int] = (),
                 mark_starts: bool = False, pipe: bool = False, wrapper: Sequence[str] = ()):
        self.data_dir = data_dir.resolve()
        self.password = password
        port = port or free_port(bind[0])
        # Its log: redis.log, written by Redis; with ``pipe``, its stdout for the owner to write.
        logfile = "" if pipe else str(self.data_dir / "redis.log")
        argv = [redis_server(), str(conf), "--port", str(port), "--bind", *bind, "--dir", str(self.data_dir),
                "--daemonize", "no", "--logfile", logfile]
        if appendfsync is not None:
            argv += ["--appendfsync", appendfsync]
        if not snapshots:
            argv += ["--save", ""]
        if password:
            argv += ["--requirepass", password]
        super().__init__(label or f"redis-server on port {port}", argv, self.data_dir / "redis.log",
                         port=port, host=bind[0], pass_fds=pass_fds, mark_starts=mark_starts, pipe=pipe,
                         wrapper=wrapper)
        self.port: int = port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{host}:{self.port}/0"

    def start(self, wait: bool = True, *, env: Mapping[str, str] | None = None,
              ignore_sigint: bool = False, timeout: float = START_TIMEOUT) -> Self:
        self.data_dir.mkdir(parents=True, exist_ok=True)  # Redis does not make its --dir
        return super().start(wait, env=env, ignore_sigint=ignore_sigint, timeout=timeout)

    def ready(self) -> bool:
        # NOAUTH: it serves, and wants a password its config sets, not we.
        reply = redis_ping(self.port, self.host, self.password)
        return reply is not None and (reply == b"PONG" or reply.startswith(b"NOAUTH"))

    def ready_means(self) -> str:
        return f"answer PING on port {self.port}"

    def call(self, *args: Arg) -> Any:
        """One command over a new connection; its reply (bytes, int, None or a
        list). OSError when Redis is unreachable, RuntimeError on an error reply."""
        with Resp(self.port, host=self.host, password=self.password) as redis:
            return redis.call(*args)

    def hgetall(self, key: Arg) -> dict[bytes, bytes]:
        items = self.call("HGETALL", key)
        return dict(zip(items[0::2], items[1::2], strict=True))

    def info(self, section: str) -> dict[str, str]:
        text = self.call("INFO", section).decode()
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


class NodeProcess(ChildProcess):
    """``python -m herd serve NAME --config CONFIG [ARGS]``; ready once its
    client port (``host:port``) accepts connections."""

    def __init__(self, name: str, config: Path | str, port: int, log_path: Path, *,
                 host: str = "127.0.0.1", env: Mapping[str, str] | None = None, args: Sequence[str] = (),
                 cwd: Path | None = None, pipe: bool = False, label: str | None = None,
                 mark_starts: bool = False, wrapper: Sequence[str] = ()):
        argv = [sys.executable, "-m", "herd", "serve", name, "--config", str(config), *args]
        super().__init__(label or f"node {name}", argv, log_path, env=env, cwd=cwd, port=port, host=host,
                         pipe=pipe, mark_starts=mark_starts, wrapper=wrapper)
        self.name = name
        self.port: int = port


# -- a throwaway herd -------------------------------------------------------------


@dataclass(frozen=True)
class NodePorts:
    """Where a node started by the harness listens. A node on a free port
    cannot use the default peer and admin ports (port + 10000, + 20000: taken,
    or above 65535), so each gets three free ports of its own."""

    client: int
    peer: int
    admin: int

    @classmethod
    def free(cls, host: str = "127.0.0.1") -> NodePorts:
        return cls(*free_ports(3, host))


def silent_places(key_env: str) -> str:
    """The ``[places]`` table (its body) of a herd that is never asked WHATSAT:
    a Google provider at a closed loopback port, so that no node spends its
    first seconds loading the offline data set. ``key_env`` must be set in the
    nodes' environment (to anything)."""
    return f'provider = "google"\nurl = "http://127.0.0.1:9/unused"\nkey_env = "{key_env}"'


def node_section(name: str, host: str, ports: NodePorts, redis_url: str, peers: Sequence[str],
                 extra: str = "") -> str:
    """A ``[nodes.NAME]`` TOML section for a node listening on ``ports``."""
    return (f'[nodes.{name}]\nhost = "{host}"\nport = {ports.client}\npeer_port = {ports.peer}\n'
            f'admin = "{host}:{ports.admin}"\nredis = "{redis_url}"\npeers = {json.dumps(list(peers))}\n'
            + extra)


class LocalNode(NodeProcess):
    """A node of a LocalHerd: its three ports and its own Redis."""

    def __init__(self, name: str, config: Path, ports: NodePorts, redis: RedisProcess, log_path: Path,
                 **options: Any):
        super().__init__(name, config, ports.client, log_path, **options)
        self.ports = ports
        self.redis = redis

    def access_log(self) -> str:
        """Its access log (every line in and out, connections opened and closed)."""
        path = self.log_path.parent / "access.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def record(self, client_id: str) -> dict[bytes, bytes]:
        """A client's record in this node's Redis under the default key prefix
        ({} when there is none)."""
        return self.redis.hgetall(f"herd:client:{client_id}")


class LocalHerd:
    """A throwaway herd under ``root``: for each node of ``topology`` (name ->
    the peers its config lists) a redis-server (data in ``root/NAME/redis``,
    no RDB snapshots) and ``herd serve`` (log ``root/NAME/herd.log``) on free
    loopback ports. ``root/herd.toml`` is written at once: ``[herd]`` with
    ``secret_env = "HERD_SECRET"`` and ``herd_extra``, ``[places]`` with the
    ``places`` lines, and one section per node (plus ``node_extra``, in which
    ``{name}`` is the node's name). Nodes get ``HERD_SECRET=secret`` and
    ``env``.

    ``start`` starts the Redis servers, then the nodes; ``stop`` stops
    everything (SIGTERM, then SIGKILL after ``stop_grace`` s; 0: SIGKILL at
    once), and so do leaving a ``with`` block and a ``start`` that fails or is
    interrupted."""

    def __init__(self, root: Path, topology: Mapping[str, Sequence[str]], *, secret: str, places: str,
                 env: Mapping[str, str] | None = None, herd_extra: str = "", node_extra: str = "",
                 node_args: Sequence[str] = (), appendfsync: str = "always",
                 stop_grace: float = STOP_TIMEOUT, mark_starts: bool = False, access_log: bool = True):
        self.root = root
        self.access_log = access_log
        self.topology = {name: list(peers) for name, peers in topology.items()}
        self.secret = secret
        self.stop_grace = stop_grace
        self.config = root / "herd.toml"
        self.nodes: dict[str, LocalNode] = {}
        for name in topology:
            redis = RedisProcess(root / name / "redis", appendfsync=appendfsync, snapshots=False,
                                 label=f"{name}'s redis-server", mark_starts=mark_starts)
            self.nodes[name] = LocalNode(name, self.config, NodePorts.free(), redis, root / name / "herd.log",
                                         env={"HERD_SECRET": secret, **(env or {})}, args=node_args,
                                         mark_starts=mark_starts)
        root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(self._toml(places, herd_extra, node_extra))

    def _toml(self, places: str, herd_extra: str, node_extra: str) -> str:
        # Access logs beside each node's herd.log (relative paths: to this file),
        # unless ``access_log`` is False (the config's default, or herd_extra's).
        access = 'access_log = "{node}/access.log"\n' if self.access_log else ""
        out = [f'[herd]\nsecret_env = "HERD_SECRET"\n{access}{herd_extra}\n', f"[places]\n{places}\n"]
        for name, node in self.nodes.items():
            out.append(node_section(name, "127.0.0.1", node.ports, node.redis.url, self.topology[name],
                                    node_extra.format(name=name)))
        return "\n".join(out)

    def __getitem__(self, name: str) -> LocalNode:
        return self.nodes[name]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def neighbours(self, name: str) -> set[str]:
        """The nodes linked to ``name`` (a link is listed by one end or both)."""
        return set(self.topology[name]) | {n for n, peers in self.topology.items() if name in peers}

    def start(self, names: Iterable[str] | None = None) -> Self:
        """Start ``names`` (default: all): their Redis servers, once those
        answer their nodes, once those accept clients. Should that fail or be
        interrupted, everything is stopped and the error raised."""
        chosen = list(self.nodes if names is None else names)
        try:
            self.start_redis(chosen)
            self.start_nodes(chosen)
        except BaseException:
            self.stop()
            raise
        return self

    def start_redis(self, names: Iterable[str] | None = None) -> None:
        """Start the Redis servers of ``names`` together; return once each answers."""
        self._start([self.nodes[n].redis for n in (self.nodes if names is None else names)])

    def start_nodes(self, names: Iterable[str] | None = None) -> None:
        """Start the nodes ``names`` together; return once each accepts clients."""
        self._start([self.nodes[n] for n in (self.nodes if names is None else names)])

    @staticmethod
    def _start(processes: Sequence[ChildProcess]) -> None:
        for p in processes:
            p.start(wait=False)
        for p in processes:
            p.wait_ready()

    def wait_links(self, timeout: float = 20.0) -> None:
        """Return once every running node has logged a link up to each running
        neighbour; WaitTimeout naming a link still down after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        for name, node in self.nodes.items():
            for peer in sorted(self.neighbours(name)):
                if node.alive() and self.nodes[peer].alive():
                    wait_until(functools.partial(_logged, node, f"peer {peer} link up"),
                               max(0.0, deadline - time.monotonic()), f"link {name}-{peer}", every=0.05)

    def stop(self) -> None:
        """Stop every node, then every Redis (nodes may need it to the end)."""
        stop_all(self.nodes.values(), self.stop_grace)
        stop_all([node.redis for node in self.nodes.values()], self.stop_grace)


def _logged(process: ChildProcess, text: str) -> bool:
    return text in process.log()
