"""``herd backup NODE [--out DIR]`` and ``herd restore NODE --from FILE``: a
node's Redis saved while the node serves, and put back (docs/OPERATIONS.md
"Backing a node up", "Restoring a node from a backup").

Backup: the node's Redis sends a snapshot of one instant over a replication
connection, as ``redis-cli --rdb`` does (``REPLCONF rdb-only 1``, ``SYNC``):
Redis forks and writes the snapshot in the child, so the node keeps serving
and the copy is consistent. It needs no access to Redis's files, works from
any host that reaches the Redis, and does not care how the AOF is laid out.
The file, ``DIR/NODE-<UTC time>.rdb`` (mode 0600: it holds client data), is
written under a temporary name, fsynced, checked with ``redis-check-rdb``
when that is installed, then renamed.

Restore, with the node stopped and its Redis running (empty after a loss, or
as it is): a throwaway redis-server loads the backup on a free loopback port;
every key under the node's prefix in the node's database is deleted from the
node's Redis and copied from it (DUMP/RESTORE, expiry times kept). The node's
Redis logs these writes to its AOF like any others, so its files need no
handling. Then the node's reconciliation state is reset: its peer offsets
(at start it takes a full transfer from each peer, which brings back every
update acknowledged since the backup, its own included) and its log epoch
(every peer takes a full transfer from it). Keys of other prefixes or
databases in that Redis are left alone.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from config.schema import ConfigError, HerdConfig, NodeConfig, RedisAddress
from herd.tools.harness import ChildProcess, free_port, port_open, redis_server
from herd.tools.resp import Resp, encode_command, read_reply
from storage.keys import glob_escape

SYNC_TIMEOUT = 60.0  # seconds without a byte from Redis (it sends a newline a second while it forks)
LOAD_TIMEOUT = 600.0  # seconds the throwaway Redis may take to load a backup
BATCH = 500  # keys per pipelined DUMP / RESTORE round trip
CHUNK = 1 << 20


class BackupError(Exception):
    """The backup or restore could not be done; the message says why (one line)."""


# -- backup -----------------------------------------------------------------------


def run_backup(config_path: str, name: str, out_dir: str) -> int:
    """``herd backup``: 0 with the file written, 1 when it could not be made."""
    node = _node(config_path, name)
    try:
        path, size, keys = backup(node.redis, name, Path(out_dir))
    except BackupError as err:
        print(f"herd backup: {err}", file=sys.stderr)
        return 1
    counted = f", {keys} keys (checked with redis-check-rdb)" if keys is not None else ""
    print(f"backup of node {name} (Redis {_where(node.redis)}): {path}, {size} bytes{counted}")
    return 0


def backup(redis: RedisAddress, name: str, out_dir: Path) -> tuple[Path, int, int | None]:
    """Save a snapshot of ``redis`` in ``out_dir``; (its path, its size, the
    keys redis-check-rdb counted or None without that tool)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.rdb"
    partial = out_dir / f".{final.name}.part"
    try:
        with open(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
            size = fetch_snapshot(redis, out)
            out.flush()
            os.fsync(out.fileno())
        keys = check_rdb(partial)
        partial.rename(final)
        _fsync_dir(out_dir)
    except OSError as err:
        raise BackupError(f"{partial}: {err.strerror or err}") from None
    finally:
        partial.unlink(missing_ok=True)
    return final, size, keys


def fetch_snapshot(redis: RedisAddress, out: IO[bytes]) -> int:
    """Ask ``redis`` for a snapshot (as a replica would) and copy it to ``out``;
    its size. BackupError when Redis cannot be reached or refuses."""
    try:
        sock = socket.create_connection((redis.host, redis.port), timeout=SYNC_TIMEOUT)
    except OSError as err:
        raise BackupError(f"cannot reach Redis {_where(redis)}: {err.strerror or err}") from None
    with sock, sock.makefile("rb") as replies:
        try:
            if redis.password:
                _ask(sock, replies, "AUTH", redis.password)
            try:  # Redis 7: end the connection after the snapshot, send no commands after it
                _ask(sock, replies, "REPLCONF", "rdb-only", "1")
            except RuntimeError:
                pass  # an older Redis: the connection is closed after the copy anyway
            sock.sendall(encode_command("SYNC"))
            return _copy_bulk(replies, out)
        except RuntimeError as err:
            raise BackupError(f"Redis {_where(redis)} refused the snapshot: {err}") from None
        except OSError as err:
            raise BackupError(f"Redis {_where(redis)}: the snapshot broke off ({err})") from None


def _ask(sock: socket.socket, replies: IO[bytes], *args: str) -> Any:
    sock.sendall(encode_command(*args))
    return read_reply(replies)


def _copy_bulk(replies: IO[bytes], out: IO[bytes]) -> int:
    """Copy the ``$<length>`` payload SYNC answers with (after the newlines Redis
    sends while it forks) to ``out``."""
    while True:
        line = replies.readline()
        if not line:
            raise OSError("Redis closed the connection")
        if line.startswith(b"-"):
            raise RuntimeError(line[1:].strip().decode(errors="replace"))
        if line.startswith(b"$"):
            break
    if line.startswith(b"$EOF:"):  # only for replicas that announce capa eof, which this does not
        raise RuntimeError("Redis sent a diskless (EOF-delimited) snapshot")
    left = size = int(line[1:])
    while left:
        chunk = replies.read(min(CHUNK, left))
        if not chunk:
            raise OSError(f"Redis closed the connection {left} bytes before the end")
        out.write(chunk)
        left -= len(chunk)
    return size


def check_rdb(path: Path) -> int | None:
    """The keys in the RDB file at ``path``, checked (checksum included) by
    redis-check-rdb; None when that is not installed (only the header is
    checked then). BackupError when the file is not a sound snapshot."""
    with open(path, "rb") as f:
        if f.read(5) != b"REDIS":
            raise BackupError(f"{path}: not a Redis snapshot (no REDIS header)")
    tool = shutil.which("redis-check-rdb")
    if tool is None:
        return None
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=LOAD_TIMEOUT)
    if result.returncode != 0 or "RDB looks OK" not in result.stdout:
        last = (result.stdout + result.stderr).strip().splitlines()[-1:] or ["no output"]
        raise BackupError(f"{path}: redis-check-rdb finds it damaged ({last[0]})")
    found = re.search(r"\[info\] (\d+) keys read", result.stdout)
    return int(found[1]) if found else None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- restore ----------------------------------------------------------------------


def run_restore(config_path: str, name: str, source: str) -> int:
    """``herd restore``: 0 once the backup is in the node's Redis, 1 when not."""
    node = _node(config_path, name)
    try:
        copied, summary = restore(node, name, Path(source))
    except BackupError as err:
        print(f"herd restore: {err}", file=sys.stderr)
        return 1
    clients = summary.get(b"clients", b"0").decode()
    print(f"restored node {name} from {source}: {copied} keys ({clients} clients) into Redis "
          f"{_where(node.redis)} db {node.redis.db}; its peer offsets and log epoch are reset, so once "
          f"started it takes a full transfer from each peer and they from it")
    return 0


def restore(node: NodeConfig, name: str, source: Path) -> tuple[int, dict[bytes, bytes]]:
    """Replace ``node``'s keys in its Redis with those of the backup ``source``;
    (keys copied, the node's summary hash as restored)."""
    if port_open(node.port, node.host, timeout=1.0):
        raise BackupError(f"node {name} still accepts clients at {node.host}:{node.port}: stop it first "
                          f"(under systemd: systemctl stop herd@{name}.socket herd@{name}; under herd up: "
                          "stop it, and start that node's redis-server alone)")
    if not source.is_file():
        raise BackupError(f"{source}: no such file")
    check_rdb(source)
    prefix = node.prefix.encode()
    with tempfile.TemporaryDirectory(prefix="herd-restore-") as scratch, \
            _Loaded(source, Path(scratch)) as backup_redis:
        target = _connect(node.redis, f"the Redis of node {name}")
        with target:
            if node.redis.db:
                backup_redis.command("SELECT", node.redis.db)
                target.command("SELECT", node.redis.db)
            try:
                _delete(target, _keys(target, prefix))
                copied = _copy(backup_redis, target, prefix)
                _delete(target, [prefix + b"journal:epoch", *_keys(target, prefix + b"peer:")])
                summary = _hash(target, prefix + b"summary")
            except RuntimeError as err:  # an error reply: out of memory, read-only, ...
                raise BackupError(f"Redis {_where(node.redis)} refused the restore ({err}); "
                                  f"run herd restore again once it is fixed") from None
            if summary != _hash(backup_redis, prefix + b"summary"):
                raise BackupError(f"Redis {_where(node.redis)} does not hold what {source} holds after the "
                                  "copy (was the node started meanwhile?)")
    return copied, summary


class _LoadedBackup(ChildProcess):
    """A throwaway redis-server that loads a backup: no AOF, no snapshots."""

    def __init__(self, directory: Path, port: int):
        argv = [redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
                "--dbfilename", "backup.rdb", "--appendonly", "no", "--save", "", "--daemonize", "no",
                "--logfile", str(directory / "redis.log")]
        super().__init__("redis-server loading the backup", argv, directory / "redis.log", port=port)


class _Loaded:
    """Context manager: the backup loaded in a throwaway Redis, as a Resp."""

    def __init__(self, source: Path, scratch: Path):
        self._source, self._scratch = source, scratch
        self._server: _LoadedBackup | None = None
        self._resp: Resp | None = None

    def __enter__(self) -> Resp:
        shutil.copyfile(self._source, self._scratch / "backup.rdb")
        port = free_port()
        self._server = _LoadedBackup(self._scratch, port).start(wait=False)
        deadline = time.monotonic() + LOAD_TIMEOUT
        while (resp := self._serving(port)) is None:
            if not self._server.alive():
                log = self._server.log().strip().splitlines()[-1:] or ["no log"]
                raise BackupError(f"{self._source}: redis-server cannot load it ({log[0]})")
            if time.monotonic() > deadline:
                raise BackupError(f"{self._source}: not loaded within {LOAD_TIMEOUT:g} s")
            time.sleep(0.05)
        self._resp = resp
        return resp

    @staticmethod
    def _serving(port: int) -> Resp | None:
        """A connection once Redis has loaded the backup (not while LOADING)."""
        try:
            resp = Resp(port, timeout=30.0)
        except OSError:
            return None
        try:
            resp.command("DBSIZE")
        except (OSError, RuntimeError):
            resp.close()
            return None
        return resp

    def __exit__(self, *exc: object) -> None:
        if self._resp is not None:
            self._resp.close()
        if self._server is not None:
            self._server.kill()


def _connect(redis: RedisAddress, what: str) -> Resp:
    try:
        return Resp(redis.port, timeout=30.0, host=redis.host, password=redis.password)
    except (OSError, RuntimeError) as err:
        raise BackupError(f"cannot reach {what} at {_where(redis)} ({err}): start it first") from None


def _keys(redis: Resp, prefix: bytes) -> list[bytes]:
    return redis.scan(glob_escape(prefix) + b"*")


def _batches(items: list[bytes]) -> Iterator[list[bytes]]:
    for at in range(0, len(items), BATCH):
        yield items[at:at + BATCH]


def _delete(redis: Resp, keys: list[bytes]) -> None:
    for batch in _batches(keys):
        redis.command("UNLINK", *batch)


def _copy(source: Resp, target: Resp, prefix: bytes) -> int:
    """DUMP every key under ``prefix`` from ``source`` and RESTORE it in
    ``target`` with its remaining time to live; the number copied."""
    copied = 0
    for batch in _batches(_keys(source, prefix)):
        dumped = source.pipeline([c for key in batch for c in (("DUMP", key), ("PTTL", key))])
        restores = [("RESTORE", key, max(ttl, 0), payload, "REPLACE")
                    for key, payload, ttl in zip(batch, dumped[0::2], dumped[1::2], strict=True)
                    if payload is not None and ttl != -2]  # -2: expired meanwhile
        if restores:
            target.pipeline(restores)
        copied += len(restores)
    return copied


def _hash(redis: Resp, key: bytes) -> dict[bytes, bytes]:
    items = redis.command("HGETALL", key)
    return dict(zip(items[0::2], items[1::2], strict=True))


# -- shared -----------------------------------------------------------------------


def _node(config_path: str, name: str) -> NodeConfig:
    from config.loader import load_config

    config: HerdConfig = load_config(config_path)
    if name not in config.nodes:
        raise ConfigError(f"{config_path}: no node {name!r} (nodes: {', '.join(sorted(config.nodes))})")
    return config.nodes[name]


def _where(redis: RedisAddress) -> str:
    return f"{redis.host}:{redis.port}"
