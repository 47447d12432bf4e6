"""herd.cli as an operator meets it (SPEC 5, 6, 7): where the config file is
found without --config, ``--version`` and the node's first log line, exit
codes, and the lock files that make installs reproducible. Real processes,
real files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from harness import REPO

from herd.version import VERSION

# A subprocess may run outside the checkout; it still imports this herd.
ENV = {k: v for k, v in os.environ.items() if k != "HERD_CONFIG"} | {"PYTHONPATH": str(REPO)}
CONFIG_COMMANDS = (("serve", "Bailey"), ("up",), ("check",), ("status", "--once"), ("places", "load"))
SMALL = """\
[herd]
secret_env = "HERD_TEST_SECRET"
[nodes.Bailey]
host = "127.0.0.1"
port = 10000
redis = "redis://127.0.0.1:6400/0"
peers = []
"""


def herd(*args: str, cwd: Path = REPO, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "herd", *args], cwd=cwd, env=ENV | env,
                          capture_output=True, text=True, timeout=60)


def no_system_config() -> None:
    if os.path.exists("/etc/herd/herd.toml"):
        pytest.skip("/etc/herd/herd.toml exists on this machine (an installed herd)")


# --- --version and the node's first log line ----------------------------------------------


def test_version_is_the_package_version() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert VERSION == pyproject["project"]["version"] == "0.4.0"


@pytest.mark.parametrize("command", [[sys.executable, "-m", "herd"],
                                     [str(Path(sys.executable).parent / "herd")]])
def test_version_option(command: list[str]) -> None:
    if not os.path.exists(command[0]):
        pytest.skip("the herd console script is not installed next to this python (ops/setup.sh)")
    result = subprocess.run([*command, "--version"], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"herd {VERSION}\n", "")


@pytest.mark.parametrize("command", [("serve",), ("up",), ("client",), ("check",), ("status",), ("places",),
                                     ("places", "load"), ("bench",), ("chaos",), ("lab",), ("backup",),
                                     ("restore",)])
def test_every_command_has_the_version_option(command: tuple[str, ...]) -> None:
    # Found by a review: only ``herd --version`` had it; ``herd up --version`` was a usage error.
    result = herd(*command, "--version")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"herd {VERSION}\n", "")


def test_help_lists_the_exit_codes() -> None:
    result = herd("--help")
    assert result.returncode == 0
    assert "exit codes" in result.stdout
    for code in ("0  all well", "1  the command ran and found a problem", "2  usage or configuration error",
                 "130  interrupted by Ctrl-C"):
        assert code in result.stdout, code
    check_help = " ".join(herd("check", "-h").stdout.split())  # argparse wraps lines
    assert "$HERD_CONFIG, else /etc/herd/herd.toml, else ./config/herd.toml" in check_help


@pytest.mark.parametrize(("args", "said"), [
    ((), "herd: the following arguments are required: COMMAND (see: herd --help)"),
    (("client",), "herd client: the following arguments are required: HOST:PORT (see: herd client --help)"),
    (("status", "--timeout", "0"), "herd status: argument --timeout: must be more than 0 seconds: '0' "
                                   "(see: herd status --help)"),
])
def test_a_usage_error_is_one_line_and_status_2(args: tuple[str, ...], said: str) -> None:
    """Found by a review: argparse's usage line came first, and a missing
    HOST:PORT was said as "required: HOST:PORT, LINE" (LINE is optional)."""
    result = herd(*args)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", said + "\n")


def test_herd_config_naming_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    result = herd("check", HERD_CONFIG=str(missing))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"herd: $HERD_CONFIG is {missing}: no such file\n"


def test_no_config_anywhere_names_all_three_places(tmp_path: Path) -> None:
    no_system_config()
    for command in CONFIG_COMMANDS:
        result = herd(*command, cwd=tmp_path)
        assert (result.returncode, result.stdout) == (2, ""), command
        assert result.stderr == ("herd: no config file: $HERD_CONFIG is not set, and neither "
                                 f"/etc/herd/herd.toml nor {tmp_path}/config/herd.toml exists "
                                 "(or give one with --config FILE)\n"), command


@pytest.mark.parametrize("command", CONFIG_COMMANDS)
def test_a_missing_config_option_is_one_line_and_status_2(command: tuple[str, ...], tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "herd.toml").write_text(SMALL)  # there, but not what was asked for
    result = herd(*command, "--config", "nope.toml", cwd=tmp_path,
                  HERD_CONFIG=str(tmp_path / "config/herd.toml"))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "herd: --config nope.toml: no such file\n"


def test_the_config_found_is_named_on_stderr(tmp_path: Path) -> None:
    """Through $HERD_CONFIG, then config/herd.toml under the working directory;
    each command then reads that file (here: refuses an unknown node in it)."""
    no_system_config()
    path = tmp_path / "elsewhere.toml"
    path.write_text(SMALL)
    result = herd("places", "load", "Nobody", cwd=tmp_path, HERD_CONFIG=str(path))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [
        f"herd: using config {path} (from $HERD_CONFIG)",
        f"herd: {path}: nodes.Nobody: no such node (known: Bailey)"]

    (tmp_path / "config").mkdir()
    local = tmp_path / "config" / "herd.toml"
    local.write_text(SMALL)
    result = herd("places", "load", "Nobody", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [
        f"herd: using config {local}",
        f"herd: {local}: nodes.Nobody: no such node (known: Bailey)"]
    # serve names it in its first log line, beside the version (SPEC 6), or in its error
    result = herd("serve", "Nobody", cwd=tmp_path, HERD_TEST_SECRET="s")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [f"herd: {local}: nodes.Nobody: no such node (known: Bailey)"]


def test_with_json_logs_what_serve_and_up_say_before_logging_is_json(tmp_path: Path) -> None:
    # Found by a review: a node that could not start under --log-format json
    # wrote a plain line, and `journalctl -o cat | jq` stopped at it.
    no_system_config()
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "herd.toml").write_text(SMALL)
    for args in (["serve", "Bailey"], ["up"]):  # no HERD_TEST_SECRET in the environment
        result = herd(*args, "--log-format", "json", cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        [refused] = (json.loads(line) for line in result.stderr.splitlines())  # the file in it, no other line
        local = tmp_path / "config" / "herd.toml"
        assert refused["level"] == "error" and "HERD_TEST_SECRET is not set" in refused["message"]
        assert refused["message"].startswith(f"herd: {local}: ")
        assert refused["node"] == ("Bailey" if args[0] == "serve" else None) and "time" in refused


@pytest.mark.parametrize("command", [("check",), ("status", "--once"), ("places", "load", "Bailey")])
def test_a_config_found_that_does_not_load_is_one_line_naming_it(command: tuple[str, ...],
                                                                 tmp_path: Path) -> None:
    # Found by a review: "using config <file>" came first, then the error (SPEC 5: one message).
    path = tmp_path / "elsewhere.toml"
    path.write_text(SMALL.replace("port = ", "port = 'x' #"))
    result = herd(*command, cwd=tmp_path, HERD_CONFIG=str(path))
    assert (result.returncode, result.stdout) == (2, "")
    [line] = result.stderr.splitlines()
    assert line.startswith(f"herd: {path}: nodes.Bailey.port: "), line


def test_up_says_which_config_only_once_its_checks_passed(tmp_path: Path) -> None:
    # Found by a review: a Places key missing from the environment came after "using config".
    path = tmp_path / "elsewhere.toml"
    path.write_text(SMALL + '[places]\nprovider = "google"\nkey_env = "HERD_TEST_NO_KEY"\n')
    result = herd("up", "--state-dir", str(tmp_path / "state"), cwd=tmp_path, HERD_CONFIG=str(path),
                  HERD_TEST_SECRET="s")
    assert (result.returncode, result.stdout) == (2, "")
    [line] = result.stderr.splitlines()
    assert line.startswith(f"herd: {path}: places.key_env: "), line


def test_up_says_which_config_only_once_the_access_logs_open(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    path = tmp_path / "elsewhere.toml"
    path.write_text(SMALL.replace("[herd]\n", f'[herd]\naccess_log = "{tmp_path}/file/{{node}}.log"\n'))
    result = herd("up", "--state-dir", str(tmp_path / "state"), cwd=tmp_path, HERD_CONFIG=str(path),
                  HERD_TEST_SECRET="s")
    assert (result.returncode, result.stdout) == (2, "")
    [line] = result.stderr.splitlines()
    assert line.startswith(f"herd: {path}: herd.access_log: cannot open "), line


def test_a_fatal_line_carries_its_priority_with_log_prefix() -> None:
    result = herd("serve", "Bailey", "--config", "nope.toml", "--log-prefix")
    assert (result.returncode, result.stderr) == (2, "<3>herd: --config nope.toml: no such file\n")


def test_an_explicit_config_is_not_announced(tmp_path: Path) -> None:
    path = tmp_path / "h.toml"
    path.write_text(SMALL)
    result = herd("places", "load", "Nobody", "--config", str(path))
    assert result.stderr == f"herd: {path}: nodes.Nobody: no such node (known: Bailey)\n"


# --- reproducible installs (SPEC 7) ----------------------------------------------------------

_PIN = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)")
_HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}\Z")


def locked(path: Path) -> dict[str, str]:
    """name -> version of every requirement in a pip-compile lock; asserts
    each is pinned with ``==`` and has at least one sha256 hash."""
    text = path.read_text()
    entries = [e.strip() for e in re.sub(r"\\\n", " ", re.sub(r"(?m)#.*$", "", text)).splitlines()]
    pins: dict[str, str] = {}
    for entry in filter(None, entries):
        name_version, *options = entry.split()
        match = _PIN.fullmatch(name_version)
        assert match, f"{path.name}: not pinned with ==: {entry}"
        assert options and all(_HASH.match(o) for o in options), f"{path.name}: {name_version}: hashes"
        pins[canonical(match["name"])] = match["version"]
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def listed(path: Path) -> set[str]:
    """The package names a human-edited requirements file lists."""
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(canonical(re.split(r"[\[<>=!~; ]", line)[0]))
    return names


def test_the_locks_pin_every_package_with_a_hash() -> None:
    runtime = locked(REPO / "requirements.lock")
    dev = locked(REPO / "requirements-dev.lock")
    build = locked(REPO / "requirements-build.lock")
    assert listed(REPO / "requirements.txt") <= set(runtime)
    assert listed(REPO / "requirements-dev.txt") <= set(dev)
    assert listed(REPO / "requirements-build.txt") == {"setuptools", "wheel"} <= set(build)
    assert all(build[p] == runtime[p] for p in set(build) & set(runtime))  # so they install together
    assert {"twisted", "txredisapi", "treq", "pyopenssl", "service-identity", "cryptography"} <= set(runtime)
    assert not {"pytest", "mypy", "ruff", "hypothesis"} & set(runtime)  # production hosts get no test tools
    shared = set(runtime) & set(dev)
    assert {p: runtime[p] for p in shared} == {p: dev[p] for p in shared}  # so they install together


def test_requirements_txt_lists_what_the_package_depends_on() -> None:
    """requirements.txt alone installs a herd that runs: the same list as pyproject."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert {canonical(re.split(r"[\[<>=!~; ]", d)[0]) for d in pyproject["project"]["dependencies"]} \
        == listed(REPO / "requirements.txt")


def test_setup_and_install_take_the_locked_versions_only(tmp_path: Path) -> None:
    setup = (REPO / "ops" / "setup.sh").read_text()
    locks = "-r requirements.lock -r requirements-dev.lock -r requirements-build.lock"
    assert f"--require-hashes \\\n    {locks}" in setup
    assert "--no-deps --no-build-isolation -e ." in setup  # (built with the locked setuptools)
    assert "sha256sum requirements.lock requirements-dev.lock requirements-build.lock pyproject.toml" in setup
    result = subprocess.run(["bash", "ops/install.sh", "--dry-run", "--prefix", str(tmp_path), "Bailey"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    opt = f"{tmp_path}/opt/herd"
    pips = [line for line in result.stdout.splitlines() if "/bin/pip " in line]
    pip = f"  + {opt}/.venv/bin/pip install -q --disable-pip-version-check"
    assert pips == [f"{pip} --require-hashes -r {opt}/requirements.lock -r {opt}/requirements-build.lock",
                    f"{pip} --no-deps --no-build-isolation {opt}"]


def test_up_takes_the_event_log_options_of_serve() -> None:
    from herd.cli import build_parser

    for command in (["serve", "A"], ["up"]):
        options = ["--log-format", "json", "--log-level", "warning"]
        args = build_parser(command[0]).parse_args([*command, *options])
        assert (args.log_format, args.log_level) == ("json", "warning")
        assert build_parser(command[0]).parse_args(command).log_level == "info"
