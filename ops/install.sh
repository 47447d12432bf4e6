#!/usr/bin/env bash
# Turn a Debian host (12 or newer) into one that runs the named herd nodes
# under systemd, each with its own Redis. Run as root from a checkout:
#
#   sudo ops/install.sh --config /path/to/herd.toml Bailey
#
# Steps, each idempotent, printed as "install: <what>" with the commands below
# them as "  + <command>" ("  = ..." when there was nothing to do):
#   1. apt-get install what is missing of redis-server python3 python3-venv
#   2. the nodes looked up in the config (ports, addresses): fails here, before
#      any change, on a node that is not in it
#   3. system users herd and redis from ops/sysusers.d/herd.conf, installed as
#      /etc/sysusers.d/herd.conf (systemd-sysusers; useradd where it is missing)
#   4. the checkout copied to /opt/herd (no .git, .venv, state, caches), and
#      /opt/herd/.venv built with the locked requirements (requirements.lock,
#      hashes checked) and herd installed into it (not editable)
#   5. /etc/herd/herd.toml (an existing one is never replaced without --force)
#      and /etc/herd/herd.env with a fresh random shared secret (kept once made)
#   6. per node: /etc/herd/redis/NODE.conf from the node's Redis URL (and with
#      --socket the herd@NODE.socket drop-in with the node's address)
#   7. units into /etc/systemd/system (with --clients N, per node drop-ins
#      with the memory limits for N clients), daemon-reload, enable --now
#
# Running it again upgrades: nodes that were running are restarted only when
# the code, herd.toml or the units changed (their Redis only when its own
# config changed). docs/OPERATIONS.md describes the result.
set -euo pipefail
# What this script creates must be readable by the herd and redis users even
# on a host whose root umask is 077; files that must not be are chmod-ed.
umask 022

usage() {
  cat <<'EOF'
usage: ops/install.sh [OPTION...] NODE...
Install herd under systemd on this host and run the nodes NODE... (names in the config).

  --config FILE            install FILE as /etc/herd/herd.toml (default: the
                           checkout's config/herd.toml); an existing one is kept
  --force                  replace an existing /etc/herd/herd.toml
  --durability MODE        Redis AOF fsync: strict (default, appendfsync always:
                           loses nothing acknowledged) or everysec (may lose
                           the last second on a power loss or kernel crash)
  --socket                 socket activation: write herd@NODE.socket drop-ins with
                           each node's address and enable the sockets
  --clients N              size memory for N clients: per node drop-ins with the
                           node's MemoryMax= and its Redis's maxmemory and
                           MemoryMax= (docs/OPERATIONS.md "Memory sizing"); without
                           it, drop-ins written before are kept (unit defaults:
                           1000000 clients)
  --disable-default-redis  stop and disable Debian's redis-server.service (port 6379)
  --prefix DIR             install under DIR instead of / (staging, tests); skips
                           apt-get, useradd, chown and systemctl
  --no-venv                do not build /opt/herd/.venv (tests)
  --dry-run                print every step and command; change nothing
  -h, --help               this text
EOF
}

usage_error() {
  echo "install: $*" >&2
  usage >&2
  exit 2
}

die() {
  echo "install: $*" >&2
  exit 1
}

DRY=0 FORCE=0 SOCKET=0 DISABLE_DEFAULT_REDIS=0 VENV=1
PREFIX=/ CONFIG_SRC='' DURABILITY=strict CLIENTS=''
NODES=()
while [ $# -gt 0 ]; do
  case $1 in
    --config) [ $# -ge 2 ] || usage_error "--config needs a FILE"; CONFIG_SRC=$2; shift 2 ;;
    --config=*) CONFIG_SRC=${1#*=}; shift ;;
    --prefix) [ $# -ge 2 ] || usage_error "--prefix needs a DIR"; PREFIX=$2; shift 2 ;;
    --prefix=*) PREFIX=${1#*=}; shift ;;
    --durability) [ $# -ge 2 ] || usage_error "--durability needs strict or everysec"; DURABILITY=$2; shift 2 ;;
    --durability=*) DURABILITY=${1#*=}; shift ;;
    --clients) [ $# -ge 2 ] || usage_error "--clients needs a number"; CLIENTS=$2; shift 2 ;;
    --clients=*) CLIENTS=${1#*=}; shift ;;
    --force) FORCE=1; shift ;;
    --socket) SOCKET=1; shift ;;
    --disable-default-redis) DISABLE_DEFAULT_REDIS=1; shift ;;
    --no-venv) VENV=0; shift ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; NODES+=("$@"); break ;;
    -*) usage_error "unknown option: $1" ;;
    *) NODES+=("$1"); shift ;;
  esac
done
[ ${#NODES[@]} -gt 0 ] || usage_error "no NODE given"
case $DURABILITY in
  strict|everysec) ;;
  *) usage_error "--durability must be strict or everysec, not '$DURABILITY'" ;;
esac
if [ -n "$CLIENTS" ] && ! [[ $CLIENTS =~ ^[1-9][0-9]{0,9}$ ]]; then
  usage_error "--clients must be a number of clients (1 to 9999999999), not '$CLIENTS'"
fi
for node in "${NODES[@]}"; do
  # The name becomes part of unit names (herd@NODE.service) and of paths.
  [[ $node =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]*$ ]] \
    || usage_error "node name '$node' cannot be a systemd instance name (letters, digits, _ . - only)"
done
[ -z "$CONFIG_SRC" ] || [ -f "$CONFIG_SRC" ] || usage_error "--config: no such file: $CONFIG_SRC"
[ -n "$PREFIX" ] || usage_error "--prefix needs a DIR"
[[ $PREFIX == /* ]] || PREFIX=$PWD/$PREFIX
case $PREFIX in
  *[\"\\]*|*$'\n'*) usage_error "--prefix must not contain quotes, backslashes or newlines" ;;
esac
while [[ $PREFIX == */ ]]; do PREFIX=${PREFIX%/}; done  # "" for the real root

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -n "$CONFIG_SRC" ]; then
  CONFIG_SRC=$(cd "$(dirname "$CONFIG_SRC")" && pwd)/$(basename "$CONFIG_SRC")
else
  CONFIG_SRC=$SRC/config/herd.toml
fi
OPT=$PREFIX/opt/herd
ETC=$PREFIX/etc/herd
UNITDIR=$PREFIX/etc/systemd/system
STATE=$PREFIX/var/lib/herd-redis
UNITS=(herd@.service herd-redis@.service herd@.socket herd.target herd-alert@.service)
REAL_ROOT=0
[ -n "$PREFIX" ] || REAL_ROOT=1
# Checkout entries never copied to /opt/herd (names, at any depth).
# (tls: ops/tls-certs.sh's default output, private keys; Redis files a redis-server
# started in the checkout left.)
EXCLUDES=(.git .venv state __pycache__ build '*.egg-info' .pytest_cache .mypy_cache .ruff_cache .hypothesis
          tls '*.rdb' '*.aof' appendonlydir)

# Run by a venv's python: whether its packages directory is this Python's.
HAS_ITS_PACKAGES='import os, sys, sysconfig; sys.exit(not os.path.isdir(sysconfig.get_path("purelib")))'

step() { echo "install: $*"; }
note() { echo "install: note: $*"; }

# run CMD...: print the command; run it unless --dry-run.
run() {
  local quoted
  printf -v quoted '%q ' "$@"
  echo "  + ${quoted% }"
  if [ "$DRY" = 0 ]; then
    "$@"
  fi
}

# put PATH MODE [hide] < CONTENT: write stdin to PATH with MODE (through a
# temporary file and a rename) unless PATH already holds exactly that with
# that mode. Returns 0 when it wrote (or, dry, would write), 1 when PATH was up
# to date. A dry run shows the content unless "hide" is given (secrets, long
# files).
put() {
  local path=$1 mode=$2 hide=${3:-} content tmp
  content=$(cat; echo x)
  content=${content%x}
  if [ -f "$path" ] && [ "$(stat -c %a "$path")" = "${mode#0}" ] \
      && cmp -s "$path" <(printf '%s' "$content"); then
    echo "  = $path is up to date"
    return 1
  fi
  echo "  + write $path (mode $mode)"
  if [ "$DRY" = 1 ]; then
    [ -n "$hide" ] || printf '%s' "$content" | sed 's/^/  |   /'
    return 0
  fi
  tmp=$(mktemp "$path.XXXXXX")
  printf '%s' "$content" >"$tmp"
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$path"
}

# owner OWNER:GROUP PATH...: chown, on the real root only (with --prefix the
# users may not exist and we may not be root).
owner() {
  if [ "$REAL_ROOT" = 1 ]; then
    run chown "$@"
  fi
}

active() { systemctl is-active --quiet "$1"; }

if [ "$DRY" = 1 ]; then
  step "dry run: printing the steps; nothing is changed"
fi
if [ "$REAL_ROOT" = 1 ] && [ "$DRY" = 0 ] && [ "$(id -u)" -ne 0 ]; then
  die "run as root (sudo ops/install.sh ...), or use --dry-run or --prefix DIR"
fi
if [ "$REAL_ROOT" = 0 ]; then
  note "--prefix $PREFIX: skipping apt-get, useradd, chown and systemctl"
fi

# 1. Packages ------------------------------------------------------------------
step "packages: redis-server python3 python3-venv"
missing=()
if [ "$REAL_ROOT" = 1 ]; then
  for pkg in redis-server python3 python3-venv; do
    if [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" != "install ok installed" ]; then
      missing+=("$pkg")
    fi
  done
  if [ ${#missing[@]} -gt 0 ]; then
    run apt-get update -q
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
  else
    echo "  = all installed"
  fi
fi
# The venv is built on Debian's python3, never on whatever python3 comes first
# in root's PATH (pyenv, conda: often under /root, which the herd user cannot
# read and ProtectHome= hides). Only a --prefix install may fall back to PATH.
PYTHON=/usr/bin/python3
if [ ! -x "$PYTHON" ] && [ "$REAL_ROOT" = 0 ]; then
  PYTHON=$(command -v python3 || true)
fi
if [ -z "$PYTHON" ] || [ ! -x "$PYTHON" ]; then
  die "python3 is missing (without --prefix or --dry-run the package step installs it)"
fi
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "herd needs Python >= 3.11; $PYTHON is $("$PYTHON" -V 2>&1)"

# 2. The nodes in the config ------------------------------------------------------
# The herd.toml the nodes will read: the installed one, unless there is none
# yet or --force replaces it.
if [ -f "$ETC/herd.toml" ] && [ "$FORCE" = 0 ]; then
  CONFIG_USED=$ETC/herd.toml
else
  CONFIG_USED=$CONFIG_SRC
fi
step "nodes ${NODES[*]} in $CONFIG_USED"
# Validates the whole file with herd's own loader (from this checkout: the code
# about to be installed), then prints one line per node: name,
# Redis `bind` addresses, Redis port, Redis password quoted for redis.conf (""
# when none), the node's address as a ListenStream= value, separated by \x1f
# (not a tab: read would merge empty fields); and last the name of the shared
# secret's variable and max_connections, separated the same way.
READ_CONFIG=$(cat <<'PYTHON'
import ipaddress
import os
import sys

sys.path.insert(0, sys.argv[1])
from config.loader import load_config  # noqa: E402
from config.schema import ConfigError, listen_host  # noqa: E402


def die(message):
    print(f"install: {message}", file=sys.stderr)
    sys.exit(1)


def redis_quote(text):
    """A double-quoted redis.conf string; anything unusual as \\xHH."""
    out = "".join(chr(b) if 32 < b < 127 and chr(b) not in '"\\' else f"\\x{b:02x}"
                  for b in text.encode())
    return f'"{out}"'


def ip(host):
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


path = sys.argv[2]
try:
    config = load_config(path)
except ConfigError as err:
    die(str(err))
for name in sys.argv[3:]:
    node = config.nodes.get(name)
    if node is None:
        kept = os.environ.get("INSTALL_CONFIG_KEPT")  # a --config FILE not installed over this one
        hint = f"; that installed config is kept: --force replaces it with {kept}" if kept else ""
        die(f"node {name!r} is not in {path} (nodes: {', '.join(sorted(config.nodes))}){hint}")
    redis = node.redis
    where = f"{path}: nodes.{name}.redis"
    address = ip(redis.host)
    if redis.host == "localhost" or (address is not None and address.is_loopback):
        bind = "127.0.0.1 -::1"
    elif address is None:
        die(f"{where}: host {redis.host!r} must be an IP address of this host or localhost "
            "(install.sh runs the node's Redis on this host)")
    elif redis.password is None:
        die(f"{where}: a Redis on the non-loopback address {redis.host} refuses clients "
            "without a password (protected mode): give the URL one "
            "(redis://:PASSWORD@host:port) or use 127.0.0.1")
    else:
        bind = f"{redis.host} 127.0.0.1 -::1"
    password = redis_quote(redis.password) if redis.password is not None else ""
    listen = ip(listen_host(node.host))
    if listen is None:
        listen = str(node.port)  # a host name: the node listens on every interface
    elif listen.version == 6:
        listen = f"[{listen}]:{node.port}"
    else:
        listen = f"{listen}:{node.port}"
    print(name, bind, redis.port, password, listen, sep="\x1f")
print(config.secret_env, config.max_connections, sep="\x1f")
PYTHON
)
KEPT=''
[ "$CONFIG_USED" = "$CONFIG_SRC" ] || KEPT=$CONFIG_SRC
node_lines=$(INSTALL_CONFIG_KEPT=$KEPT "$PYTHON" -c "$READ_CONFIG" "$SRC" "$CONFIG_USED" "${NODES[@]}") || exit 1
IFS=$'\x1f' read -r SECRET_ENV MAX_CONNECTIONS < <(tail -n 1 <<<"$node_lines")
node_lines=$(sed '$d' <<<"$node_lines")
while IFS=$'\x1f' read -r node _ port _ listen; do
  echo "  = $node: listens on $listen, its Redis on port $port"
done <<<"$node_lines"

# 3. Users ---------------------------------------------------------------------
step "system users: herd (nodes), redis (their Redis servers): $PREFIX/etc/sysusers.d/herd.conf"
[ -d "$PREFIX/etc/sysusers.d" ] || run mkdir -p "$PREFIX/etc/sysusers.d"
put "$PREFIX/etc/sysusers.d/herd.conf" 0644 hide <"$SRC/ops/sysusers.d/herd.conf" || true
if [ "$REAL_ROOT" = 1 ]; then
  if command -v systemd-sysusers >/dev/null 2>&1; then
    # Makes what is missing of the file's users and groups; keeps existing ones
    # (Debian's redis user, made by the redis-server package, above all).
    run systemd-sysusers /etc/sysusers.d/herd.conf
  else
    # The same users without systemd-sysusers.
    if getent passwd herd >/dev/null; then
      echo "  = user herd exists"
    else
      if getent group herd >/dev/null; then group=(--gid herd); else group=(--user-group); fi
      run useradd --system "${group[@]}" --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin --comment "herd node" herd
    fi
    if getent passwd redis >/dev/null; then
      echo "  = user redis exists"
    else
      if getent group redis >/dev/null; then group=(--gid redis); else group=(--user-group); fi
      run useradd --system "${group[@]}" --no-create-home --home-dir /var/lib/redis \
        --shell /usr/sbin/nologin --comment "Redis" redis
    fi
  fi
fi

# 4. Code and virtualenv -------------------------------------------------------
step "code: $SRC -> $OPT"
CODE_CHANGED=0
if [ -d "$OPT" ] && [ "$(cd "$OPT" && pwd -P)" = "$(cd "$SRC" && pwd -P)" ]; then
  echo "  = running from $OPT itself: nothing to copy"
else
  diff_excludes=()
  for name in "${EXCLUDES[@]}"; do diff_excludes+=(-x "$name"); done
  if [ -d "$OPT" ] && diff -rq --no-dereference "${diff_excludes[@]}" "$SRC" "$OPT" >/dev/null 2>&1; then
    echo "  = $OPT is up to date"
  else
    CODE_CHANGED=1
    run mkdir -p "$OPT"
    if command -v rsync >/dev/null 2>&1; then
      rsync_excludes=()
      for name in "${EXCLUDES[@]}"; do rsync_excludes+=("--exclude=$name"); done
      # Excluded names in $OPT (.venv above all) are kept, not deleted.
      run rsync -a --delete --no-owner --no-group "${rsync_excludes[@]}" "$SRC/" "$OPT/"
    else
      # cp has no excludes: mirror entry by entry, keeping $OPT/.venv.
      shopt -s dotglob nullglob
      for entry in "$OPT"/*; do
        [ "${entry##*/}" = .venv ] || run rm -rf "$entry"
      done
      for entry in "$SRC"/*; do
        skip=0
        for name in "${EXCLUDES[@]}"; do
          # shellcheck disable=SC2053  # $name is a glob on purpose
          [[ ${entry##*/} == $name ]] && skip=1
        done
        [ "$skip" = 1 ] || run cp -a --no-preserve=ownership "$entry" "$OPT/"
      done
      shopt -u dotglob nullglob
      # Caches further down (herd/__pycache__ and the like).
      run find "$OPT" -path "$OPT/.venv" -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
    fi
    # Readable by the herd user whatever the checkout's umask; writable by root only.
    run chmod -R u+rwX,go+rX,go-w "$OPT"
  fi
fi

step "virtualenv: $OPT/.venv"
if [ "$VENV" = 0 ]; then
  note "--no-venv: not building $OPT/.venv"
else
  # Made again when it no longer runs (python3 removed under it), when its
  # packages are another Python version's (python3 upgraded: the venv runs
  # the new one, its packages sit in lib/python3.<old>), or when it was made
  # from another Python than $PYTHON.
  if [ -e "$OPT/.venv" ] && { ! "$OPT/.venv/bin/python" -c "$HAS_ITS_PACKAGES" >/dev/null 2>&1 \
      || ! grep -qx "home = $(dirname "$PYTHON")" "$OPT/.venv/pyvenv.cfg"; }; then
    run rm -rf "$OPT/.venv"
  fi
  stamp=$OPT/.venv/.herd-installed
  if [ ! -e "$OPT/.venv/bin/python" ]; then
    run "$PYTHON" -m venv "$OPT/.venv"
  fi
  if [ "$CODE_CHANGED" = 1 ] || [ ! -f "$stamp" ]; then
    CODE_CHANGED=1
    # setuptools builds in $OPT/build and would put modules that are gone
    # from the source (still in build/lib) into the new install.
    if [ -e "$OPT/build" ]; then
      run rm -rf "$OPT/build"
    fi
    # Not editable: herd's modules and their compiled bytecode live in the
    # venv, which the node (ProtectSystem=strict) only reads.
    # The locked versions only (requirements.lock, and requirements-build.lock
    # for building herd: every file checked against its sha256), so every host
    # of the herd runs the same packages; then herd, built with those (no build
    # isolation: pip would fetch the newest setuptools), without letting pip
    # pick anything else.
    run "$OPT/.venv/bin/pip" install -q --disable-pip-version-check --require-hashes \
      -r "$OPT/requirements.lock" -r "$OPT/requirements-build.lock"
    run "$OPT/.venv/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation "$OPT"
    run touch "$stamp"
  else
    echo "  = herd is installed and $OPT is unchanged"
  fi
fi

# 5. /etc/herd -------------------------------------------------------------------
step "config: $ETC/herd.toml"
CONFIG_CHANGED=0
[ -d "$ETC/redis" ] || run mkdir -p "$ETC/redis"
if [ -f "$ETC/herd.toml" ] && [ "$FORCE" = 0 ]; then
  if cmp -s "$ETC/herd.toml" "$CONFIG_SRC"; then
    echo "  = $ETC/herd.toml is up to date"
  else
    note "$ETC/herd.toml exists and differs from $CONFIG_SRC: kept (--force replaces it)"
  fi
else
  # Root-owned, readable by the herd group: it may hold Redis passwords.
  if put "$ETC/herd.toml" 0640 hide <"$CONFIG_SRC"; then
    CONFIG_CHANGED=1
  fi
fi
owner root:herd "$ETC/herd.toml"

step "shared secret: $ETC/herd.env"
if [ -f "$ETC/herd.env" ]; then
  echo "  = $ETC/herd.env exists: kept as it is"
else
  CONFIG_CHANGED=1
  if [ "$DRY" = 1 ]; then
    secret="<64 random hex digits>"
  elif command -v openssl >/dev/null 2>&1; then
    secret=$(openssl rand -hex 32)
  else
    secret=$("$PYTHON" -c 'import secrets; print(secrets.token_hex(32))')
  fi
  put "$ETC/herd.env" 0640 hide <<EOF || true
# Environment of the herd nodes on this host (EnvironmentFile= of herd@.service).
# $SECRET_ENV is the herd's shared peer secret: every node of the herd, on every
# host, needs the same value. Keep this file root:herd, mode 0640.
$SECRET_ENV=$secret
# For [places] provider = "google" or "google-new":
#GOOGLE_PLACES_KEY=
EOF
  unset secret
fi
owner root:herd "$ETC/herd.env"
echo "install: every node of the herd needs the same $SECRET_ENV: copy $ETC/herd.env"
echo "install:   to /etc/herd/herd.env on every other host of the herd (root:herd, mode 0640)"
echo "install:   before running install.sh there (it keeps an existing herd.env)"

# 6. Per node: its Redis config, its socket drop-in ---------------------------------
redis_conf() {  # node bind port password
  cat <<EOF
# Redis for herd node $1, generated by ops/install.sh from $ETC/herd.toml
# (nodes.$1.redis). Every install.sh run rewrites it: change herd.toml and run
# install.sh again. Started by herd-redis@$1.service as
#   redis-server $ETC/redis/$1.conf --supervised systemd --daemonize no
# By absolute path: a relative include is resolved against the working directory.
include "$OPT/ops/redis/redis.conf"
port $3
bind $2
dir "$STATE/$1"
EOF
  if [ "$DURABILITY" = everysec ]; then
    cat <<EOF
# install.sh --durability everysec: fsync the AOF about once a second instead
# of before every reply. May lose the last second of acknowledged updates on a
# power loss or kernel crash; $OPT/ops/redis/redis-everysec.conf explains.
appendfsync everysec
EOF
  fi
  if [ -n "$4" ]; then
    echo "# The password of nodes.$1.redis in herd.toml."
    echo "requirepass $4"
  fi
}

# Memory sizing for --clients N (docs/OPERATIONS.md "Memory sizing"), in MiB
# rounded up: Redis maxmemory = 64 MB + 600 bytes per client, the Redis unit's
# MemoryMax = 2 x maxmemory + 128 MB (copy-on-write while it snapshots), the
# node's MemoryMax = 256 MB + 250 bytes per client + 4 KB per connection.
mib() { echo $((($1 + 1048575) / 1048576)); }
if [ -n "$CLIENTS" ]; then
  REDIS_MAXMEMORY=$((64 + $(mib $((CLIENTS * 600)))))
  REDIS_MEMORYMAX=$((2 * REDIS_MAXMEMORY + 128))
  NODE_MEMORYMAX=$((256 + $(mib $((CLIENTS * 250))) + $(mib $((MAX_CONNECTIONS * 4096)))))
fi

declare -A REDIS_CHANGED=() SOCKET_CHANGED=()
while IFS=$'\x1f' read -r node bind port password listen; do
  step "redis for $node: $ETC/redis/$node.conf (port $port, $DURABILITY)"
  REDIS_CHANGED[$node]=0
  if [ -z "$password" ]; then
    put "$ETC/redis/$node.conf" 0644 < <(redis_conf "$node" "$bind" "$port" "") && REDIS_CHANGED[$node]=1
  else
    put "$ETC/redis/$node.conf" 0640 hide < <(redis_conf "$node" "$bind" "$port" "$password") \
      && REDIS_CHANGED[$node]=1
    owner root:redis "$ETC/redis/$node.conf"
  fi
  if [ "$REAL_ROOT" = 0 ] && [ ! -d "$STATE/$node" ]; then
    # On a real root systemd makes it (StateDirectory=, owned by redis).
    run mkdir -p "$STATE/$node"
  fi
  SOCKET_CHANGED[$node]=0
  if [ "$SOCKET" = 1 ]; then
    step "socket for $node: $UNITDIR/herd@$node.socket.d/listen.conf ($listen)"
    [ -d "$UNITDIR/herd@$node.socket.d" ] || run mkdir -p "$UNITDIR/herd@$node.socket.d"
    put "$UNITDIR/herd@$node.socket.d/listen.conf" 0644 <<EOF && SOCKET_CHANGED[$node]=1
# herd@$node.socket listens on node $node's address, generated by
# ops/install.sh --socket from $ETC/herd.toml (nodes.$node host and port).
[Socket]
ListenStream=
ListenStream=$listen
EOF
  fi
  if [ -n "$CLIENTS" ]; then
    step "memory for $node: $CLIENTS clients: node MemoryMax=${NODE_MEMORYMAX}M, Redis maxmemory ${REDIS_MAXMEMORY}mb MemoryMax=${REDIS_MEMORYMAX}M"
    for dir in "herd@$node.service.d" "herd-redis@$node.service.d"; do
      [ -d "$UNITDIR/$dir" ] || run mkdir -p "$UNITDIR/$dir"
    done
    put "$UNITDIR/herd@$node.service.d/memory.conf" 0644 <<EOF || true
# Node $node sized for $CLIENTS clients and max_connections = $MAX_CONNECTIONS by
# ops/install.sh --clients (docs/OPERATIONS.md "Memory sizing").
[Service]
MemoryMax=${NODE_MEMORYMAX}M
EOF
    put "$UNITDIR/herd-redis@$node.service.d/memory.conf" 0644 <<EOF && REDIS_CHANGED[$node]=1
# The Redis of node $node sized for $CLIENTS clients by ops/install.sh --clients
# (docs/OPERATIONS.md "Memory sizing").
[Service]
Environment=HERD_REDIS_MAXMEMORY=${REDIS_MAXMEMORY}mb
MemoryMax=${REDIS_MEMORYMAX}M
EOF
  fi
done <<<"$node_lines"

# 7. Units and systemd ---------------------------------------------------------------
UNITS_FROM=$OPT/ops/systemd
[ -d "$UNITS_FROM" ] || UNITS_FROM=$SRC/ops/systemd  # a dry run before the copy
step "units: ${UNITS[*]} -> $UNITDIR"
UNITS_CHANGED=0
[ -d "$UNITDIR" ] || run mkdir -p "$UNITDIR"
for unit in "${UNITS[@]}"; do
  if put "$UNITDIR/$unit" 0644 hide <"$UNITS_FROM/$unit"; then
    UNITS_CHANGED=1
  fi
done

step "systemd: enable and start ${NODES[*]}"
if [ "$REAL_ROOT" = 0 ]; then
  note "--prefix: not running systemctl"
elif [ ! -d /run/systemd/system ]; then
  note "systemd is not running here (no /run/systemd/system): skipped; on the host, run:"
  for node in "${NODES[@]}"; do
    sock=""
    [ "$SOCKET" = 0 ] || sock=" herd@$node.socket"
    note "  systemctl daemon-reload && systemctl enable --now herd-redis@$node$sock herd@$node"
  done
  note "  systemctl enable herd.target"
else
  run systemctl daemon-reload
  if [ "$DISABLE_DEFAULT_REDIS" = 1 ]; then
    run systemctl disable --now redis-server.service
  fi
  run systemctl enable herd.target
  node_restart=0
  if [ "$CODE_CHANGED" = 1 ] || [ "$CONFIG_CHANGED" = 1 ] || [ "$UNITS_CHANGED" = 1 ]; then
    node_restart=1
  fi
  for node in "${NODES[@]}"; do
    redis_unit=herd-redis@$node.service node_unit=herd@$node.service sock_unit=herd@$node.socket
    restart=0
    if active "$node_unit" && [ "$node_restart" = 1 ]; then restart=1; fi
    if active "$redis_unit" && [ "${REDIS_CHANGED[$node]}" = 1 ]; then
      # The node (Wants=, not Requires=) stays up and reconnects by itself; it
      # is restarted below only for new code, config or units.
      run systemctl restart "$redis_unit"
    fi
    run systemctl enable --now "$redis_unit"
    if [ "$SOCKET" = 1 ] && { ! active "$sock_unit" || [ "${SOCKET_CHANGED[$node]}" = 1 ]; }; then
      # A running node holds its port (or the old socket's fd): stop it, then
      # (re)start the socket, and the node takes the socket's fd when it starts.
      if active "$node_unit"; then
        run systemctl stop "$node_unit"
        restart=0
      fi
      if active "$sock_unit"; then
        run systemctl restart "$sock_unit"
      fi
    fi
    if [ "$SOCKET" = 1 ]; then
      run systemctl enable --now "$sock_unit"
    fi
    run systemctl enable --now "$node_unit"
    if [ "$restart" = 1 ]; then
      run systemctl restart "$node_unit"  # new code, config or unit
    fi
  done
fi

step "done: ${NODES[*]}"
for node in "${NODES[@]}"; do
  echo "install:   systemctl status herd@$node herd-redis@$node; journalctl -u herd@$node -f"
done
