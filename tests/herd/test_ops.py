"""ops/ for running one node per host under systemd: the units pass
``systemd-analyze verify`` and are at least as hardened as Debian's own
redis-server.service (``systemd-analyze security``), their memory limits
follow the sizing rule, ``ops/install.sh`` installs into a fake root
(``--prefix``) and does so idempotently, the sysusers.d file makes the users,
the alert script runs the operator's hook, and the Redis config install.sh
generates starts a real redis-server."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from harness import REPO, RedisProcess, Resp

UNITS = REPO / "ops" / "systemd"
UNIT_FILES = ("herd@.service", "herd-redis@.service", "herd@.socket", "herd.target", "herd-alert@.service")
INSTALL = REPO / "ops" / "install.sh"
SYSTEM_UNITS = next((p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
                     if p.is_dir()), None)

needs_verify = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None or SYSTEM_UNITS is None,
    reason="systemd-analyze is not installed (Debian package `systemd`; ops/setup.sh --tests installs it)",
)


# ---------------------------------------------------------------- unit files --

def unit_settings(text: str) -> dict[str, list[str]]:
    """``Section.Key`` -> values, in order, of a unit file (comments dropped)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def exec_paths(text: str) -> set[str]:
    """The absolute programs of every Exec*= line (without the -@:+! prefixes)."""
    paths = set()
    for key, values in unit_settings(text).items():
        if key.split(".", 1)[1].startswith("Exec"):
            for value in values:
                program = value.lstrip("-@:+!").split()[0] if value else ""
                if program.startswith("/"):
                    paths.add(program)
    return paths


def fake_root(root: Path, units: dict[str, str]) -> Path:
    """A file-system root for ``systemd-analyze verify --root``: the system's
    own units (network-online.target, sysinit.target, ...), ``units`` (name ->
    text) in /etc/systemd/system, and an executable stub for every program
    they run, since verify insists that ExecStart= binaries exist."""
    assert SYSTEM_UNITS is not None
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    etc = root / "etc/systemd/system"
    etc.mkdir(parents=True, exist_ok=True)
    for name, text in units.items():
        target = etc / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        for program in exec_paths(text):
            stub = root / program.lstrip("/")
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text("#!/bin/sh\nexit 0\n")
            stub.chmod(0o755)
    return root


def verify(root: Path, *names: str) -> str:
    """Run ``systemd-analyze verify`` on unit ``names`` inside ``root``; return
    its problems ("" if none). It exits 0 on unknown keys and unparsable
    values (it only warns), so any output about a herd unit counts too."""
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "--generators=no", f"--root={root}", *names],
        capture_output=True, text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if "herd" in line]
    if result.returncode != 0:
        problems.insert(0, f"systemd-analyze verify exited {result.returncode}: "
                           f"{result.stderr.strip()}")
    return "\n".join(problems)


def shipped_units() -> dict[str, str]:
    return {name: (UNITS / name).read_text() for name in UNIT_FILES}


INSTANCES = ("herd@Bailey.service", "herd-redis@Bailey.service", "herd@Bailey.socket", "herd.target",
             "herd-alert@herd@Bailey.service")


@needs_verify
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    root = fake_root(tmp_path, shipped_units())
    assert verify(root, *INSTANCES) == ""
    assert verify(root, *UNIT_FILES) == ""  # templates, as verify instantiates them


@needs_verify
@pytest.mark.parametrize("unit, old, new", [
    ("herd@.service", "Type=notify", "Type=notfy"),                       # bad value: a warning
    ("herd@.service", "WatchdogSec=30s", "WatchdogSec=30s\nWachdogSec=30s"),  # unknown key: a warning
    ("herd@.service", "Wants=herd-redis@%i.service", "Requires=herd-reddis@%i.service"),
    ("herd-redis@.service", "LimitNOFILE=65536", "LimitNOFILE=lots"),
    ("herd@.socket", "ListenStream=192.0.2.1:10000", "ListenStream=%i"),
])
def test_verify_catches_a_broken_unit(tmp_path: Path, unit: str, old: str, new: str) -> None:
    units = shipped_units()
    assert old in units[unit]
    units[unit] = units[unit].replace(old, new)
    root = fake_root(tmp_path, units)
    assert verify(root, *INSTANCES) != ""


@needs_verify
def test_verify_catches_a_missing_program(tmp_path: Path) -> None:
    root = fake_root(tmp_path, shipped_units())
    (root / "opt/herd/.venv/bin/herd").unlink()
    assert "/opt/herd/.venv/bin/herd" in verify(root, "herd@Bailey.service")


def test_node_unit_settings() -> None:
    unit = unit_settings((UNITS / "herd@.service").read_text())
    expected = {
        "Service.Type": ["notify"],
        "Service.NotifyAccess": ["main"],
        "Service.WatchdogSec": ["30s"],
        "Service.ExecStart": [
            "/opt/herd/.venv/bin/herd serve %i --config /etc/herd/herd.toml --log-format json"],
        "Service.EnvironmentFile": ["/etc/herd/herd.env"],
        "Service.Restart": ["on-failure"],
        "Service.User": ["herd"],
        "Service.Group": ["herd"],
        "Service.StateDirectory": ["herd/%i"],
        "Service.LogsDirectory": ["herd"],
        "Service.KillSignal": ["SIGTERM"],
        "Service.TimeoutStopSec": ["15"],
        "Service.CapabilityBoundingSet": [""],
        "Service.ProtectSystem": ["strict"],
        "Service.RestrictAddressFamilies": ["AF_INET AF_INET6 AF_UNIX"],
        "Unit.Wants": ["herd-redis@%i.service", "network-online.target"],
        "Unit.After": ["network-online.target herd-redis@%i.service"],
        "Install.WantedBy": ["herd.target multi-user.target"],
    }
    assert {key: unit.get(key) for key in expected} == expected
    assert "PYTHONUNBUFFERED=1" in unit["Service.Environment"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectControlGroups", "RestrictNamespaces", "LockPersonality"):
        assert unit[f"Service.{key}"] == ["yes"], key


def test_redis_unit_settings() -> None:
    unit = unit_settings((UNITS / "herd-redis@.service").read_text())
    assert unit["Service.ExecStart"] == [
        "/usr/bin/redis-server /etc/herd/redis/%i.conf --supervised systemd --daemonize no "
        "--maxmemory ${HERD_REDIS_MAXMEMORY}"]
    assert unit["Service.Type"] == ["notify"]
    assert unit["Service.StateDirectory"] == ["herd-redis/%i"]
    assert unit["Service.LimitNOFILE"] == ["65536"]
    assert unit["Service.User"] == ["redis"]
    assert unit["Service.MemoryDenyWriteExecute"] == ["yes"]


@pytest.mark.parametrize("name", ["herd@.service", "herd-redis@.service"])
def test_units_alert_when_they_fail_and_are_hardened_like_debians_redis(name: str) -> None:
    unit = unit_settings((UNITS / name).read_text())
    assert unit["Unit.OnFailure"] == ["herd-alert@%N.service"]
    for key in ("PrivateUsers", "PrivateMounts", "ProtectClock", "ProtectHostname", "ProtectKernelLogs",
                "RestrictRealtime", "RemoveIPC", "NoNewPrivileges"):
        assert unit[f"Service.{key}"] == ["yes"], key
    assert unit["Service.SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert unit["Service.SystemCallArchitectures"] == ["native"]
    assert unit["Service.CapabilityBoundingSet"] == [""]
    assert unit["Service.UMask"] == ["0077"]


DEBIAN_REDIS_UNIT = Path("/lib/systemd/system/redis-server.service")
DEBIAN_REDIS_EXPOSURE = 1.2  # systemd 252, Debian 12's redis-server 7.0.15 unit (when not installed)


def exposure(unit_file: Path) -> float:
    """The overall exposure ``systemd-analyze security`` gives a unit file (lower is better)."""
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit_file)],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    return float(match[1])


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_units_expose_no_more_than_debians_redis_server_unit() -> None:
    reference = exposure(DEBIAN_REDIS_UNIT) if DEBIAN_REDIS_UNIT.exists() else DEBIAN_REDIS_EXPOSURE
    for name in ("herd@.service", "herd-redis@.service"):
        assert exposure(UNITS / name) <= reference, name


def unit_value(text: str, key: str) -> str:
    values = unit_settings(text)[key]
    return values[-1]


def test_memory_limits_follow_the_sizing_rule() -> None:
    """The units' defaults are the rule of docs/OPERATIONS.md "Memory sizing"
    (and of install.sh --clients) for 1,000,000 clients and 10,000
    connections; redis.conf's maxmemory is the same."""
    node = (UNITS / "herd@.service").read_text()
    redis = (UNITS / "herd-redis@.service").read_text()
    mib = 1 << 20
    maxmemory = 64 + -(-1_000_000 * 600 // mib)
    assert unit_value(redis, "Service.Environment") == f"HERD_REDIS_MAXMEMORY={maxmemory}mb"
    assert unit_value(redis, "Service.MemoryMax") == f"{2 * maxmemory + 128}M"
    node_max = 256 + -(-1_000_000 * 250 // mib) + -(-10_000 * 4096 // mib)
    assert unit_value(node, "Service.MemoryMax") == f"{node_max}M"
    assert f"\nmaxmemory {maxmemory}mb\n" in (REPO / "ops/redis/redis.conf").read_text()


# ---------------------------------------------------------------- install.sh --

def install(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(INSTALL), *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=REPO)


def installed(prefix: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    result = install("--prefix", prefix, "--no-venv", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def secret_of(prefix: Path) -> str:
    match = re.search(r"^HERD_SECRET=([0-9a-f]{64})$", (prefix / "etc/herd/herd.env").read_text(), re.M)
    assert match, "herd.env has no HERD_SECRET of 64 hex digits"
    return match[1]


def test_install_script_parses() -> None:
    result = subprocess.run(["bash", "-n", str(INSTALL)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("args, message", [
    ((), "no NODE given"),
    (("--frobnicate", "Bailey"), "unknown option: --frobnicate"),
    (("--durability", "sometimes", "Bailey"), "--durability must be strict or everysec"),
    (("--config",), "--config needs a FILE"),
    (("Bad/Name",), "cannot be a systemd instance name"),
    (("--clients", "lots", "Bailey"), "--clients must be a number of clients"),
])
def test_install_usage_errors_exit_2(args: tuple[str, ...], message: str) -> None:
    result = install(*args)
    assert result.returncode == 2
    first = result.stderr.splitlines()[0]
    assert first.startswith("install: ") and message in first, result.stderr
    assert "usage: ops/install.sh" in result.stderr


def test_dry_run_prints_every_step_and_changes_nothing(tmp_path: Path) -> None:
    prefix = tmp_path / "root"
    prefix.mkdir()
    result = install("--dry-run", "--prefix", prefix, "--socket", "Bailey")
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(prefix.iterdir()) == []
    out = result.stdout
    for step in ("packages", "nodes Bailey", "code:", "virtualenv:", "config:", "shared secret:",
                 "redis for Bailey", "socket for Bailey", "units:", "systemd:"):
        assert f"\ninstall: {step}" in out, step
    for command in (f"-m venv {prefix}/opt/herd/.venv",
                    f"write {prefix}/etc/herd/herd.toml (mode 0640)",
                    f"write {prefix}/etc/herd/herd.env (mode 0640)",
                    f"write {prefix}/etc/herd/redis/Bailey.conf (mode 0644)",
                    f"write {prefix}/etc/systemd/system/herd@.service (mode 0644)",
                    f"write {prefix}/etc/systemd/system/herd@Bailey.socket.d/listen.conf (mode 0644)"):
        assert re.search(rf"^  \+ (\S+ )?{re.escape(command)}$", out, re.M), command
    assert "port 6400" in out  # the generated Redis config is shown
    assert "HERD_SECRET=" not in out  # the secret never is


def test_a_node_missing_from_the_installed_config_names_the_kept_file_and_force(tmp_path: Path) -> None:
    # Found by a review: the docs said --config is read first; an installed
    # herd.toml is (it is never replaced without --force), and the refusal
    # named only that file.
    prefix = tmp_path / "root"
    (prefix / "etc/herd").mkdir(parents=True)
    (prefix / "etc/herd/herd.toml").write_text(
        '[herd]\nsecret_env = "HERD_SECRET"\n\n[nodes.Bailey]\nhost = "127.0.0.1"\nport = 10000\n'
        'redis = "redis://127.0.0.1:6400/0"\npeers = []\n')
    given = REPO / "config/herd.toml"
    result = install("--dry-run", "--prefix", prefix, "--no-venv", "--config", given, "Bona")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"install: node 'Bona' is not in {prefix}/etc/herd/herd.toml (nodes: Bailey); "
        f"that installed config is kept: --force replaces it with {given}")
    forced = install("--dry-run", "--prefix", prefix, "--no-venv", "--force", "--config", given, "Bona")
    assert forced.returncode == 0, forced.stderr
    assert f"\ninstall: nodes Bona in {given}" in forced.stdout


@pytest.mark.skipif(Path("/run/systemd/system").exists(), reason="systemd runs here")
def test_without_systemd_every_skipped_systemctl_command_is_printed() -> None:
    result = install("--dry-run", "--config", REPO / "config/herd.toml", "Bailey", "Bona")
    assert result.returncode == 0, result.stdout + result.stderr
    notes = [line.removeprefix("install: note:   ") for line in result.stdout.splitlines()
             if line.startswith("install: note:   systemctl")]
    assert notes == [
        "systemctl daemon-reload && systemctl enable --now herd-redis@Bailey herd@Bailey",
        "systemctl daemon-reload && systemctl enable --now herd-redis@Bona herd@Bona",
        "systemctl enable herd.target",
    ]


def test_install_into_a_prefix(tmp_path: Path) -> None:
    prefix = tmp_path / "root"
    installed(prefix, "--socket", "Bailey")
    etc = prefix / "etc/herd"
    assert (etc / "herd.toml").read_bytes() == (REPO / "config/herd.toml").read_bytes()
    assert mode(etc / "herd.toml") == 0o640
    assert mode(etc / "herd.env") == 0o640
    secret_of(prefix)

    conf = (etc / "redis/Bailey.conf").read_text().splitlines()
    assert f'include "{prefix}/opt/herd/ops/redis/redis.conf"' in conf
    assert "port 6400" in conf
    assert "bind 127.0.0.1 -::1" in conf
    assert f'dir "{prefix}/var/lib/herd-redis/Bailey"' in conf
    assert (prefix / "var/lib/herd-redis/Bailey").is_dir()

    systemd = prefix / "etc/systemd/system"
    for name in UNIT_FILES:
        assert (systemd / name).read_bytes() == (UNITS / name).read_bytes(), name
    sysusers = prefix / "etc/sysusers.d/herd.conf"
    assert sysusers.read_bytes() == (REPO / "ops/sysusers.d/herd.conf").read_bytes()
    assert os.access(prefix / "opt/herd/ops/herd-alert", os.X_OK)
    assert not list(systemd.glob("herd@Bailey.service.d"))  # memory drop-ins only with --clients
    dropin = (systemd / "herd@Bailey.socket.d/listen.conf").read_text()
    assert "[Socket]\nListenStream=\nListenStream=127.0.0.1:10000\n" in dropin

    opt = prefix / "opt/herd"
    for name in ("herd/service.py", "storage", "config/loader.py", "pyproject.toml", "requirements.txt",
                 "ops/redis/redis.conf", "ops/systemd/herd@.service"):
        assert (opt / name).exists(), name
    for name in (".git", ".venv", "state", "herd/__pycache__"):
        assert not (opt / name).exists(), name


def test_a_socket_for_a_node_on_localhost_listens_on_loopback(tmp_path: Path) -> None:
    """Found by a review: its drop-in said ListenStream=10000, every interface
    (the node itself listens on 127.0.0.1 for "localhost")."""
    config = tmp_path / "herd.toml"
    config.write_text((REPO / "config/herd.toml").read_text().replace(
        'host = "127.0.0.1"\nport = 10000', 'host = "localhost"\nport = 10000', 1))
    prefix = tmp_path / "root"
    installed(prefix, "--config", config, "--socket", "Bailey")
    dropin = (prefix / "etc/systemd/system/herd@Bailey.socket.d/listen.conf").read_text()
    assert "[Socket]\nListenStream=\nListenStream=127.0.0.1:10000\n" in dropin


@needs_verify
def test_installed_units_and_socket_dropin_verify(tmp_path: Path) -> None:
    prefix = tmp_path / "root"
    installed(prefix, "--socket", "Bailey")
    systemd = prefix / "etc/systemd/system"
    units = {str(p.relative_to(systemd)): p.read_text() for p in systemd.rglob("*") if p.is_file()}
    assert "herd@Bailey.socket.d/listen.conf" in units
    root = fake_root(tmp_path / "verify", units)
    assert verify(root, *INSTANCES) == ""


def test_install_twice_keeps_the_secret_and_the_operators_config(tmp_path: Path) -> None:
    prefix = tmp_path / "root"
    installed(prefix, "Bailey")
    secret = secret_of(prefix)
    config = prefix / "etc/herd/herd.toml"
    edited = config.read_text() + "# the operator's edit\n"
    config.write_text(edited)

    again = installed(prefix, "Bailey")
    assert secret_of(prefix) == secret
    assert config.read_text() == edited
    assert "differs from" in again.stdout and "kept" in again.stdout
    assert "  + write" not in again.stdout, again.stdout  # nothing to do the second time
    assert "is up to date" in again.stdout

    # --config FILE does not replace it either, unless forced.
    other = tmp_path / "other.toml"
    other.write_text((REPO / "config/herd.toml").read_text().replace("127.0.0.1:6400/0", "127.0.0.1:6410/0"))
    installed(prefix, "--config", other, "Bailey")
    assert config.read_text() == edited
    installed(prefix, "--config", other, "--force", "Bailey")
    assert config.read_text() == other.read_text()
    assert "port 6410" in (prefix / "etc/herd/redis/Bailey.conf").read_text().splitlines()
    assert secret_of(prefix) == secret


def test_unknown_node_fails_with_one_line_naming_it(tmp_path: Path) -> None:
    prefix = tmp_path / "root"
    result = install("--prefix", prefix, "--no-venv", "Bailey", "Baily")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "'Baily'" in lines[0] and "config/herd.toml" in lines[0]
    assert not (prefix / "opt").exists()  # checked before anything is changed


def test_a_broken_config_fails_with_the_loaders_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text((REPO / "config/herd.toml").read_text().replace('peers = ["Bona", "Campbell"]',
                                                                   'peers = ["Bona", "Campbel"]'))
    result = install("--prefix", tmp_path / "root", "--no-venv", "--config", bad, "Bailey")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"install: {bad}: nodes.Bailey.peers: unknown peer 'Campbel' (did you mean 'Campbell'?)"]


# ------------------------------------------------- the generated Redis config --

def redis_command(port: int, *args: str, password: str | None = None) -> object:
    with Resp(port, password=password) as redis:
        return redis.call(*args)


# A password with characters that redis.conf must quote (a URL password holds
# anything but '@' and white space).
PASSWORD = 's3cr"t\\pa$s'


@pytest.mark.parametrize("durability, password", [("strict", None), ("everysec", None),
                                                  ("strict", PASSWORD)])
def test_generated_redis_config_runs_redis(tmp_path: Path, durability: str, password: str | None) -> None:
    prefix = tmp_path / "root"
    config = tmp_path / "herd.toml"
    text = (REPO / "config/herd.toml").read_text()
    if password is not None:
        text = text.replace('redis = "redis://127.0.0.1:6400/0"',
                            f"redis = 'redis://:{password}@127.0.0.1:6400/0'")  # TOML literal string
    config.write_text(text)
    installed(prefix, "--config", config, "--durability", durability, "Bailey")
    conf = prefix / "etc/herd/redis/Bailey.conf"
    assert mode(conf) == (0o640 if password else 0o644)

    data = tmp_path / "data"
    redis = RedisProcess(data, conf=conf)  # its requirepass is the generated one, not given here
    port = redis.port
    try:
        redis.start(timeout=10)  # ready once it answers PING, or NOAUTH: it wants the password
        if password:
            with pytest.raises(RuntimeError, match="NOAUTH"):
                redis_command(port, "PING")
            assert redis_command(port, "CONFIG", "GET", "appendfsync", password=password) == [
                b"appendfsync", b"always"]
        else:
            assert redis_command(port, "PING") == b"PONG"
            # Settings that come from the included /opt/herd/ops/redis/redis.conf:
            fsync = b"always" if durability == "strict" else b"everysec"
            assert redis_command(port, "CONFIG", "GET", "appendfsync") == [b"appendfsync", fsync]
            assert redis_command(port, "CONFIG", "GET", "appendonly") == [b"appendonly", b"yes"]
            assert redis_command(port, "CONFIG", "GET", "maxmemory-policy") == [
                b"maxmemory-policy", b"noeviction"]
    finally:
        redis.stop(timeout=10)
    assert (data / "appendonlydir").is_dir()  # the AOF went to --dir


# ---------------------------------------------------------- memory drop-ins --

@needs_verify
def test_install_clients_writes_memory_dropins_that_verify_and_are_kept(tmp_path: Path) -> None:
    prefix = tmp_path / "root"
    first = installed(prefix, "--clients", "1000000", "Bailey")
    assert "memory for Bailey: 1000000 clients: node MemoryMax=535M, Redis maxmemory 637mb MemoryMax=1402M" \
        in first.stdout
    systemd = prefix / "etc/systemd/system"
    node = (systemd / "herd@Bailey.service.d/memory.conf").read_text()
    redis = (systemd / "herd-redis@Bailey.service.d/memory.conf").read_text()
    # For 1,000,000 clients the rule gives the units' own defaults.
    assert unit_value(node, "Service.MemoryMax") == unit_value((UNITS / "herd@.service").read_text(),
                                                               "Service.MemoryMax")
    shipped = (UNITS / "herd-redis@.service").read_text()
    for key in ("Service.MemoryMax", "Service.Environment"):
        assert unit_value(redis, key) == unit_value(shipped, key)

    installed(prefix, "--clients", "5000000", "Bailey")
    redis = (systemd / "herd-redis@Bailey.service.d/memory.conf").read_text()
    assert unit_value(redis, "Service.Environment") == "HERD_REDIS_MAXMEMORY=2926mb"  # 64 + 2862
    assert unit_value(redis, "Service.MemoryMax") == "5980M"
    assert unit_value((systemd / "herd@Bailey.service.d/memory.conf").read_text(),
                      "Service.MemoryMax") == "1489M"  # 256 + 1193 + 40
    again = installed(prefix, "Bailey")  # without --clients: kept
    assert "HERD_REDIS_MAXMEMORY=2926mb" in (systemd / "herd-redis@Bailey.service.d/memory.conf").read_text()
    assert "memory for" not in again.stdout
    units = {str(p.relative_to(systemd)): p.read_text() for p in systemd.rglob("*") if p.is_file()}
    assert verify(fake_root(tmp_path / "verify", units), *INSTANCES) == ""


# ------------------------------------------------------------ users, alerts --

@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers is not installed")
def test_sysusers_file_makes_both_users_without_login(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    conf = REPO / "ops/sysusers.d/herd.conf"
    result = subprocess.run(["systemd-sysusers", f"--root={tmp_path}", str(conf)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    passwd = (tmp_path / "etc/passwd").read_text().splitlines()
    users = {line.split(":")[0]: line.split(":") for line in passwd}
    assert users["herd"][5:] == ["/nonexistent", "/usr/sbin/nologin"]
    assert users["redis"][5:] == ["/var/lib/redis", "/usr/sbin/nologin"]
    groups = {line.split(":")[0] for line in (tmp_path / "etc/group").read_text().splitlines()}
    assert {"herd", "redis"} <= groups


def run_alert(tmp_path: Path, hook: str | None) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "alert-hook"
    if hook is not None:
        path.write_text(hook)
        path.chmod(0o755)
    return subprocess.run([str(REPO / "ops/herd-alert"), "herd@Bailey"], capture_output=True, text=True,
                          timeout=30, env={**os.environ, "HERD_ALERT_HOOK": str(path)})


def test_alert_logs_at_priority_alert_and_runs_the_hook(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    result = run_alert(tmp_path, f'#!/bin/sh\n{{ echo "args: $*"; cat; }} > {seen}\n')
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("<1>herd-alert: herd@Bailey failed on ")
    lines = seen.read_text().splitlines()
    assert lines[:3] == ["args: herd@Bailey", "unit: herd@Bailey", f"host: {os.uname().nodename}"]


def test_alert_without_a_hook_only_logs_and_a_failing_hook_fails(tmp_path: Path) -> None:
    result = run_alert(tmp_path, None)
    assert result.returncode == 0 and result.stdout.count("\n") == 1
    result = run_alert(tmp_path, "#!/bin/sh\nexit 3\n")
    assert result.returncode == 3
    assert "<3>herd-alert: " in result.stdout and "exited 3" in result.stdout
