#!/usr/bin/env bash
# Set up (ops/setup.sh), then run the test suite; extra arguments go to pytest.
# The exit status is pytest's, so "no tests collected" (5) fails like any other
# non-zero status.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash ops/setup.sh --tests
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
