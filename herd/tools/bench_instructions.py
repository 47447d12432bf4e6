"""``herd bench --only instructions``: the work of an update counted in
instructions (valgrind's callgrind) instead of CPU seconds.

CPU seconds on a shared machine drift by up to 20% within minutes, more
than most levers give (docs/BENCHMARKS.md); instructions hardly do: the same
code counts the same to within about 1% from run to run (what timers do per
second of the measured part still counts, so a slower machine counts a
little more). So this tells a lever of a few percent from the noise, in a
minute, one run each. Instructions are not time (cache misses and wake-ups
cost time, not instructions), so it is not a SPEC target and not in the
default run. It needs valgrind, and ptrace permission for its vgdb (root,
or kernel.yama.ptrace_scope 0): a process asleep in a system call is
reached through ptrace.

Every process below runs under callgrind and is counted only over the
measured part: its counters are zeroed after a warm-up (``callgrind_control
--zero``) and read at the end (``--dump``).

- node: one node with no peers (the shipped access log on), its Redis beside
  it; one client connection sends LOCKSTEP IAMATs of new clients in one
  write, the next write once every reply is in, so every read holds LOCKSTEP
  requests and every store batch LOCKSTEP records, whatever the speed. The
  node per IAMAT, its Redis per record.
- ceiling: the ceiling server (``bench_load ceiling-server``) under the same
  load: per request.
- floor: a Redis taking the floor's plain writes (HSET of the seven client
  fields, GEOADD of the position: ``bench_load.record_commands``), LOCKSTEP
  records pipelined at a time: per record.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from herd.tools.bench_load import client_time, iamat, record_commands
from herd.tools.harness import (
    ChildProcess,
    NodePorts,
    NodeProcess,
    RedisProcess,
    free_port,
    node_section,
    silent_places,
)
from herd.tools.resp import Resp

LOCKSTEP = 64  # requests per write (a full store batch: storage.store.SEND_AT)
WARMUP_ROUNDS = 20
ROUNDS = 60
START_TIMEOUT = 180.0  # seconds: under callgrind a node imports about 50 times slower
READ_TIMEOUT = 120.0


class InstructionsError(Exception):
    """The scenario could not run (its message says why, in one line)."""


def run(root: Path, appendfsync: str, rounds: int = ROUNDS) -> dict[str, Any]:
    """The instructions of each part per update (see the module);
    InstructionsError (one line) when a part could not be counted."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise InstructionsError("valgrind is not installed (apt-get install valgrind)")
    out: dict[str, Any] = {"lockstep": LOCKSTEP, "rounds": rounds}
    try:
        out["node"], out["redis"] = _node_and_redis(root / "node", appendfsync, rounds)
        out["ceiling"] = _ceiling(root / "ceiling", rounds)
        out["floor"] = _floor(root / "floor", appendfsync, rounds)
    except OSError as err:  # a process under valgrind died, or did not answer in READ_TIMEOUT
        raise InstructionsError(f"lost a process under valgrind: {err or type(err).__name__}") from None
    return out


def callgrind(out: Path) -> list[str]:
    """The command that runs a program under callgrind, writing to ``out``
    (and vgdb's pipes beside it, not in /tmp)."""
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", f"--vgdb-prefix={out}.vgdb"]


def counted(processes: list[tuple[ChildProcess, Path]], work: Callable[[], None]) -> list[int]:
    """What each process (under callgrind, writing to its path) spends on
    ``work``: its instructions from just before to just after."""
    for process, out in processes:
        _control("--zero", process, out)
    work()
    totals = []
    for process, out in processes:
        _control("--dump", process, out)
        totals.append(_totals(Path(f"{out}.1")))
    return totals


def _control(what: str, process: ChildProcess, out: Path) -> None:
    """``callgrind_control`` WHAT for ``process``. It exits 0 whatever
    happened and says what went wrong on stdout ("Error: ...", "No active
    callgrind runs"); its vgdb is killed with it on a timeout."""
    argv = ["callgrind_control", f"--vgdb-prefix={out}.vgdb", what, str(process.pid)]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True) as control:
        try:
            said, _ = control.communicate(timeout=READ_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(control.pid, signal.SIGKILL)
            raise InstructionsError(f"callgrind_control {what} got no answer from {process.label} in "
                                    f"{READ_TIMEOUT:g} s (vgdb needs ptrace: root, or "
                                    "kernel.yama.ptrace_scope 0)") from None
    failed = [line for line in said.splitlines() if line.startswith(("Error", "No active"))]
    if control.returncode != 0 or failed:
        raise InstructionsError(f"callgrind_control {what} {process.label}: "
                                f"{(failed or said.splitlines() or ['failed'])[0]}")


def _totals(dump: Path) -> int:
    """The instructions a callgrind dump counted (its ``totals:`` line)."""
    deadline = time.monotonic() + READ_TIMEOUT
    while time.monotonic() < deadline:  # (written by the process itself, a moment later)
        if dump.exists():
            for line in dump.read_text(errors="replace").splitlines():
                if line.startswith("totals:"):
                    return int(line.split()[1])
        time.sleep(0.1)
    raise InstructionsError(f"no callgrind totals in {dump}")


def _node_and_redis(root: Path, appendfsync: str, rounds: int) -> tuple[dict[str, Any], dict[str, Any]]:
    redis = RedisProcess(root / "redis", appendfsync=appendfsync, snapshots=False, label="its redis-server",
                         wrapper=callgrind(root / "redis.callgrind"))
    ports = NodePorts.free()
    config = root / "herd.toml"
    root.mkdir(parents=True, exist_ok=True)
    config.write_text('[herd]\nsecret_env = "HERD_SECRET"\naccess_log = "{node}/access.log"\n\n'
                      f'[places]\n{silent_places("HERD_PLACES_KEY")}\n\n'
                      + node_section("Bailey", "127.0.0.1", ports, redis.url, []))
    node = NodeProcess("Bailey", config, ports.client, root / "Bailey" / "herd.log",
                       env={"HERD_SECRET": "instructions", "HERD_PLACES_KEY": "unused"},
                       wrapper=callgrind(root / "node.callgrind"))
    with redis, node:
        redis.start(timeout=START_TIMEOUT)
        node.start(timeout=START_TIMEOUT)
        lockstep(ports.client, b"warm", WARMUP_ROUNDS)
        watched = [(node, root / "node.callgrind"), (redis, root / "redis.callgrind")]
        node_count, redis_count = counted(watched, lambda: lockstep(ports.client, b"bench", rounds))
    updates = rounds * LOCKSTEP
    return ({"per_iamat": round(node_count / updates), "instructions": node_count, "iamats": updates},
            {"per_record": round(redis_count / updates), "instructions": redis_count, "records": updates})


def _ceiling(root: Path, rounds: int) -> dict[str, Any]:
    port = free_port()
    argv = [sys.executable, "-m", "herd.tools.bench_load", "ceiling-server", str(port)]
    server = ChildProcess("the ceiling server", argv, root / "ceiling.log", port=port,
                          wrapper=callgrind(root / "ceiling.callgrind"))
    with server:
        server.start(timeout=START_TIMEOUT)
        lockstep(port, b"warm", WARMUP_ROUNDS)
        [count] = counted([(server, root / "ceiling.callgrind")], lambda: lockstep(port, b"bench", rounds))
    return {"per_request": round(count / (rounds * LOCKSTEP)), "instructions": count,
            "requests": rounds * LOCKSTEP}


def _floor(root: Path, appendfsync: str, rounds: int) -> dict[str, Any]:
    redis = RedisProcess(root / "redis", appendfsync=appendfsync, snapshots=False,
                         label="the floor's redis-server", wrapper=callgrind(root / "floor.callgrind"))
    with redis:
        redis.start(timeout=START_TIMEOUT)
        plain_writes(redis.port, 0, WARMUP_ROUNDS)
        [count] = counted([(redis, root / "floor.callgrind")],
                          lambda: plain_writes(redis.port, WARMUP_ROUNDS * LOCKSTEP, rounds))
    records = rounds * LOCKSTEP
    return {"per_record": round(count / records), "instructions": count, "records": records}


def lockstep(port: int, prefix: bytes, rounds: int) -> None:
    """``rounds`` writes of LOCKSTEP IAMATs of new clients on one connection,
    each once the one before is answered (InstructionsError on any other
    reply than an AT line)."""
    when = client_time(time.time_ns())
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT) as sock:
        for first in range(0, rounds * LOCKSTEP, LOCKSTEP):
            sock.sendall(b"".join([iamat(prefix, first + i, when) for i in range(LOCKSTEP)]))
            replies = _read_lines(sock, LOCKSTEP)
            refused = [line for line in replies if not line.startswith(b"AT ")]
            if refused:
                raise InstructionsError(f"not an AT reply: {refused[0]!r}")


def _read_lines(sock: socket.socket, count: int) -> list[bytes]:
    data = b""
    while data.count(b"\n") < count:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise InstructionsError("the connection closed before every reply came")
        data += chunk
    return data.split(b"\n")[:count]


def plain_writes(port: int, first: int, rounds: int) -> None:
    """``rounds`` times LOCKSTEP records of new clients (``first`` the first
    one's number) written with the floor's plain commands, pipelined, each
    round once the one before is answered."""
    when = client_time(time.time_ns())
    with Resp(port, timeout=READ_TIMEOUT) as redis:
        for start in range(first, first + rounds * LOCKSTEP, LOCKSTEP):
            records = [record_commands(b"herd:", start + i, when) for i in range(LOCKSTEP)]
            redis.sock.sendall(b"".join(records))
            replies = _read_lines(redis.sock, 2 * LOCKSTEP)  # an integer reply (one line) a command
            refused = [line for line in replies if not line.startswith(b":")]
            if refused:
                raise InstructionsError(f"the floor's Redis refused a write: {refused[0].strip()!r}")
