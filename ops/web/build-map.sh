#!/usr/bin/env bash
# Rebuild the admin web page's map data, herd/web/static/world.json, from
# world-atlas (Natural Earth 1:110m as TopoJSON) installed from npm at the
# version package-lock.json pins. Needs node/npm and python3; the node itself
# needs neither (the output is committed and served as a static file).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
npm ci --no-audit --no-fund --silent
python3 build_map.py node_modules/world-atlas ../../herd/web/static/world.json
