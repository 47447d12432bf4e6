#!/usr/bin/env bash
# Set up (ops/setup.sh), then run the five-node herd of config/herd.toml on this
# machine, its Redis data and logs under ./state, until Ctrl-C. Extra arguments
# go to `herd up` (for example --log-format json).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash ops/setup.sh
if [ -z "${HERD_SECRET:-}" ]; then
  export HERD_SECRET=herd-dev-secret
  echo "ops/run-local.sh: HERD_SECRET is not set; using the development secret (not for production)" >&2
fi
exec .venv/bin/herd up --config config/herd.toml --state-dir state "$@"
