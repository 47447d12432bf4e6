#!/usr/bin/env bash
# Set this machine up to run herd: redis-server, Python >= 3.11 with venv, and
# .venv in the repository root with the locked requirements (requirements.lock,
# requirements-dev.lock, requirements-build.lock) and herd itself. With --tests, also what the test
# suite uses besides: systemd's tools, iproute2, nftables, strace, valgrind, chromium.
# Idempotent; quiet on success except one final line. Works from any directory.
#
# Debian's own redis-server service (port 6379) is left alone: herd starts its
# own redis-server processes on the ports named in its config.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { echo "ops/setup.sh: $*" >&2; }

# Run a command as root: directly, or through sudo when we are not root.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    say "need root (or sudo) to run: $*"
    return 1
  fi
}

# Run a command with its output held back; show the output only if it fails.
quietly() {
  local log status=0
  log=$(mktemp)
  "$@" >"$log" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then
    cat "$log" >&2
    say "failed ($status): $*"
  fi
  rm -f "$log"
  return "$status"
}

apt_install() {
  # (waits for another apt, unattended-upgrades on a fresh VM say, to finish)
  quietly as_root apt-get -o DPkg::Lock::Timeout=300 update
  quietly as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y "$@"
}

# A command installed here: on the PATH, or in the sbin directories that a
# user's PATH leaves out on Debian (nft is /usr/sbin/nft).
have() {
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]
}

tests=false
case "${1:-}" in
  --tests) tests=true ;;
  "") ;;
  *) say "usage: ops/setup.sh [--tests]"; exit 2 ;;
esac

if ! have redis-server; then
  apt_install redis-server
fi

if "$tests"; then
  # systemd's tools (systemd-analyze verify, systemd-socket-activate) check the
  # shipped units and socket activation in the tests; installing the package
  # does not start anything in a container.
  if ! have systemd-socket-activate || ! have systemd-analyze; then
    apt_install systemd
  fi

  # `herd lab` (and tests/herd/test_lab.py) build hosts as network namespaces with
  # `ip netns`/veth/bridge (iproute2) and cut links with nftables rules.
  if ! have ip; then
    apt_install iproute2
  fi
  if ! have nft; then
    apt_install nftables
  fi

  # strace checks that the units' SystemCallFilter= allows what the node and
  # its Redis call (tests/herd/test_syscalls.py).
  if ! have strace; then
    apt_install strace
  fi

  # valgrind counts instructions for `herd bench --only instructions`
  # (tests/herd/test_bench.py).
  if ! have valgrind; then
    apt_install valgrind
  fi

  # The admin web page is tested in a real, headless browser (tests/herd/test_web.py):
  # Debian's chromium with its matching chromedriver.
  if ! have chromium || ! have chromedriver; then
    apt_install chromium chromium-driver
  fi
fi  # --tests

if ! command -v python3 >/dev/null 2>&1; then
  apt_install python3 python3-venv
fi
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  say "herd needs Python >= 3.11; python3 is $(python3 -V 2>&1)"
  exit 1
fi

# A .venv that no longer runs (python3 removed), or whose packages are another
# Python version's (python3 upgraded: the venv runs the new one, its packages
# sit in lib/python3.<old>), is made again.
if [ -e .venv ] && ! .venv/bin/python -c \
    'import os, sys, sysconfig; sys.exit(not os.path.isdir(sysconfig.get_path("purelib")))' >/dev/null 2>&1; then
  rm -rf .venv
fi
if [ ! -e .venv ]; then
  # Debian ships venv's pip bootstrap separately, in python3-venv.
  if ! python3 -m venv .venv >/dev/null 2>&1; then
    rm -rf .venv
    apt_install python3-venv
    quietly python3 -m venv .venv
  fi
fi

# The locked versions (runtime, test tools and what builds herd, every file
# checked against its sha256), then herd itself, editable, built with those
# (no build isolation: pip would fetch the newest setuptools), without letting
# pip pick other versions.
# Only when the locks or the package metadata differ from the last successful
# install (the stamp file holds their checksums), so repeated runs cost nothing.
stamp=.venv/.herd-installed
inputs=$(sha256sum requirements.lock requirements-dev.lock requirements-build.lock pyproject.toml)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$inputs" ]; then
  quietly .venv/bin/pip install -q --disable-pip-version-check --require-hashes \
    -r requirements.lock -r requirements-dev.lock -r requirements-build.lock
  quietly .venv/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  printf '%s\n' "$inputs" >"$stamp"
fi

echo "ops/setup.sh: ready: $(redis-server --version | cut -d' ' -f1-3), $(.venv/bin/python -V) in .venv"
