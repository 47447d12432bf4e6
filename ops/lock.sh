#!/usr/bin/env bash
# Refresh the lock files from the human-edited lists, with pip-tools in a
# throwaway venv:
#   requirements.txt     -> requirements.lock      (runtime: every host of a herd)
#   requirements-dev.txt -> requirements-dev.lock  (tests and checks)
#   requirements-build.txt -> requirements-build.lock  (what builds herd itself)
# Each pins every package, dependencies included, with sha256 hashes of all its
# files (any platform), so `pip install --require-hashes` gets the same
# versions everywhere. Pins still allowed by the lists are kept; extra
# arguments go to pip-compile, e.g. `bash ops/lock.sh --upgrade` (everything)
# or `bash ops/lock.sh --upgrade-package twisted`. Resolved for Python 3.11
# (Debian 12's python3): PYTHON names the interpreter (default python3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# The tools that write the locks, pinned too (pip-tools follows pip's internals).
PIP_VERSION=26.3
PIP_TOOLS_VERSION=7.7.0

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
  echo "ops/lock.sh: the locks are resolved for Python 3.11; $python is $("$python" -V 2>&1)" \
       "(set PYTHON=/path/to/python3.11)" >&2
  exit 2
fi
venv=$(mktemp -d)
trap 'rm -rf "$venv"' EXIT
"$python" -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "pip==$PIP_VERSION" "pip-tools==$PIP_TOOLS_VERSION"
compile() {  # input output [pip-compile args...]
  local input=$1 output=$2
  shift 2
  # CUSTOM_COMPILE_COMMAND: the header of the lock says how to refresh it.
  CUSTOM_COMPILE_COMMAND="bash ops/lock.sh" "$venv/bin/pip-compile" --quiet --generate-hashes \
    --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links --resolver=backtracking \
    --output-file "$output" "$@" "$input"
}
# The runtime lock first: the dev list is constrained by it (-c requirements.lock).
compile requirements.txt requirements.lock "$@"
compile requirements-dev.txt requirements-dev.lock "$@"
compile requirements-build.txt requirements-build.lock "$@"
echo "ops/lock.sh: requirements.lock, requirements-dev.lock and requirements-build.lock written" >&2
