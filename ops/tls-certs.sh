#!/usr/bin/env bash
# Make the certificates for TLS on peer links (docs/OPERATIONS.md "TLS
# certificates for peer links"): a private CA for the herd, then one key and
# certificate per node whose subjectAltName is the node's `host` from the
# config (an IP SAN for an IP address, a DNS SAN for a name): a dialling node
# checks that the certificate of the peer it reached names the address it
# dialled. Run it on an operator's machine from a checkout:
#
#   ops/tls-certs.sh --config /path/to/herd.toml --out tls
#
# writes tls/ca.crt, tls/ca.key and tls/NODE.crt, tls/NODE.key for every node
# (or the NODEs named), matching
#
#   [herd]
#   tls_cert = "tls/{node}.crt"
#   tls_key = "tls/{node}.key"
#   tls_ca = "tls/ca.crt"
#
# Existing files are kept: running it again after adding a node makes only
# that node's files with the same CA; --renew replaces the named nodes'
# certificates (a new key each). Keys are made mode 0600. ca.key signs every
# certificate: keep it off the herd's hosts.
set -euo pipefail
umask 077

usage() {
  cat <<'EOF'
usage: ops/tls-certs.sh [--config FILE] [--out DIR] [--days N] [--renew] [NODE...]
Make a CA (unless DIR has one) and a key and certificate per node (default:
every node of the config) for TLS on peer links; each certificate names the
node's host (IP or DNS subjectAltName).

  --config FILE   the herd file (default: the checkout's config/herd.toml)
  --out DIR       where the files go (default: ./tls)
  --days N        node certificates' validity in days (default 825; the CA: 3650)
  --renew         replace the certificates (and keys) of the nodes named
  -h, --help      this text
EOF
}

usage_error() {
  echo "tls-certs: $*" >&2
  usage >&2
  exit 2
}

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONFIG=$SRC/config/herd.toml OUT=tls DAYS=825 RENEW=0
NODES=()
while [ $# -gt 0 ]; do
  case $1 in
    --config) [ $# -ge 2 ] || usage_error "--config needs a FILE"; CONFIG=$2; shift 2 ;;
    --config=*) CONFIG=${1#*=}; shift ;;
    --out) [ $# -ge 2 ] || usage_error "--out needs a DIR"; OUT=$2; shift 2 ;;
    --out=*) OUT=${1#*=}; shift ;;
    --days) [ $# -ge 2 ] || usage_error "--days needs a number"; DAYS=$2; shift 2 ;;
    --days=*) DAYS=${1#*=}; shift ;;
    --renew) RENEW=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; NODES+=("$@"); break ;;
    -*) usage_error "unknown option: $1" ;;
    *) NODES+=("$1"); shift ;;
  esac
done
[[ $DAYS =~ ^[1-9][0-9]{0,4}$ ]] || usage_error "--days must be a number of days, not '$DAYS'"
[ -f "$CONFIG" ] || usage_error "--config: no such file: $CONFIG"
command -v openssl >/dev/null || { echo "tls-certs: openssl is not installed (apt-get install openssl)" >&2; exit 1; }

# NAME<TAB>SAN per node, read with herd's own loader (a bad config or an
# unknown node is one line and exit 1).
READ_HOSTS=$(cat <<'PYTHON'
import ipaddress
import sys

sys.path.insert(0, sys.argv[1])
from config.loader import load_config  # noqa: E402
from config.schema import ConfigError  # noqa: E402

try:
    config = load_config(sys.argv[2])
except ConfigError as err:
    sys.exit(f"tls-certs: {err}")
for name in sys.argv[3:] or sorted(config.nodes):
    node = config.nodes.get(name)
    if node is None:
        sys.exit(f"tls-certs: node {name!r} is not in {sys.argv[2]} (nodes: {', '.join(sorted(config.nodes))})")
    try:
        san = f"IP:{ipaddress.ip_address(node.host)}"
    except ValueError:
        san = f"DNS:{node.host}"
    print(name, san, sep="\t")
PYTHON
)
hosts=$(python3 -c "$READ_HOSTS" "$SRC" "$CONFIG" "${NODES[@]}") || exit 1

mkdir -p "$OUT"
if [ -f "$OUT/ca.crt" ] && [ -f "$OUT/ca.key" ]; then
  echo "tls-certs: = $OUT/ca.crt: the CA exists, kept"
else
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$OUT/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$OUT/ca.key" -sha256 -days 3650 -subj "/CN=herd peer CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$OUT/ca.crt"
  chmod 0644 "$OUT/ca.crt"
  echo "tls-certs: + $OUT/ca.crt, $OUT/ca.key: a new CA (valid 3650 days)"
fi

while IFS=$'\t' read -r node san; do
  if [ -f "$OUT/$node.crt" ] && [ -f "$OUT/$node.key" ] && [ "$RENEW" = 0 ]; then
    echo "tls-certs: = $OUT/$node.crt exists, kept (--renew replaces it)"
    continue
  fi
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$OUT/$node.key.new" 2>/dev/null
  openssl req -new -key "$OUT/$node.key.new" -subj "/CN=$node" -out "$OUT/$node.csr"
  # Both roles: a node is the server of the links it accepts and the client
  # of those it dials.
  openssl x509 -req -in "$OUT/$node.csr" -CA "$OUT/ca.crt" -CAkey "$OUT/ca.key" -sha256 -days "$DAYS" \
    -set_serial "0x$(openssl rand -hex 16)" -out "$OUT/$node.crt.new" -extfile <(cat <<EOF
subjectAltName=$san
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth,clientAuth
EOF
) 2>/dev/null
  rm -f "$OUT/$node.csr"
  chmod 0644 "$OUT/$node.crt.new"
  mv -f "$OUT/$node.key.new" "$OUT/$node.key"
  mv -f "$OUT/$node.crt.new" "$OUT/$node.crt"
  echo "tls-certs: + $OUT/$node.crt, $OUT/$node.key: node $node, subjectAltName $san (valid $DAYS days)"
done <<<"$hosts"

echo "tls-certs: to each host copy ca.crt and that host's NODE.crt and NODE.key (never ca.key) to"
echo "tls-certs:   /etc/herd/tls/, the key root:herd mode 0640, e.g."
echo "tls-certs:   install -o root -g herd -m 0640 $OUT/NODE.key /etc/herd/tls/NODE.key"
