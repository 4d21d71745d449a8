#!/usr/bin/env bash
# Starts a Tessera cluster on this host, every component as its own process:
# etcd, SHARDS x ZONES tablets (one per zone per shard), one coordinator per zone, one gate.
# Pid files and logs go under RUN_DIR; stop everything with deploy/local/stop.sh.
#
# Running it again is safe: components whose pid file names a live process are left alone and
# dead ones are started again (with their data), so it also restarts what crashed.
#
# Settings (environment variables):
#   TESSERA_BIN  tessera binary      (default: `tessera` on PATH, else target/{release,debug}/tessera)
#   ETCD_BIN     etcd binary         (default: etcd on PATH)
#   RUN_DIR      pid files, logs, configs and data   (default: ./tessera-run)
#   KEYSPACE     keyspace = database name            (default: app)
#   SHARDS       shards of the keyspace              (default: 2)
#   ZONES        zones; one tablet per shard per zone, one coordinator per zone (default: 3)
#   GATE_PORT    PostgreSQL clients connect here     (default: 15432)
#   METRICS_PORT gate Prometheus endpoint            (default: 15990)
#   ETCD_PORT    etcd client port; peer port is +1   (default: 2379)
#   BASE_PORT    tablet i uses PostgreSQL BASE_PORT+i, pooler +1000, gRPC +2000 (default: 25432)
#   UNSAFE_FAST  1 = PostgreSQL with fsync=off and initdb without sync (tests only; loses data
#                on a machine crash)
#   READY_TIMEOUT_S  how long to wait for each component to be ready (default: 120)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

if [ -z "${TESSERA_BIN:-}" ]; then
  TESSERA_BIN=$(command -v tessera || true)
  for profile in release debug; do
    if [ -z "$TESSERA_BIN" ] && [ -x "$repo/target/$profile/tessera" ]; then
      TESSERA_BIN=$repo/target/$profile/tessera
    fi
  done
fi
ETCD_BIN=${ETCD_BIN:-$(command -v etcd || true)}
RUN_DIR=${RUN_DIR:-./tessera-run}
KEYSPACE=${KEYSPACE:-app}
SHARDS=${SHARDS:-2}
ZONES=${ZONES:-3}
GATE_PORT=${GATE_PORT:-15432}
METRICS_PORT=${METRICS_PORT:-15990}
ETCD_PORT=${ETCD_PORT:-2379}
BASE_PORT=${BASE_PORT:-25432}
UNSAFE_FAST=${UNSAFE_FAST:-0}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-120}

fail() { echo "start.sh: $*" >&2; exit 1; }
[ -n "$TESSERA_BIN" ] && [ -x "$TESSERA_BIN" ] ||
  fail "tessera binary not found: build it (cargo build --release -p tessera-cli) or set TESSERA_BIN"
[ -n "$ETCD_BIN" ] && [ -x "$ETCD_BIN" ] ||
  fail "etcd not found: install it (apt-get install etcd-server) or set ETCD_BIN"

mkdir -p "$RUN_DIR"
RUN_DIR=$(cd "$RUN_DIR" && pwd)
# PostgreSQL runs as the unprivileged postgres user when we are root: it must reach its dirs.
chmod 755 "$RUN_DIR"
mkdir -p "$RUN_DIR/pids" "$RUN_DIR/logs" "$RUN_DIR/config"
TOPO="etcd://127.0.0.1:$ETCD_PORT/tessera"

# alive NAME: the component's pid file names a running process of this run dir (not a zombie
# of a killed one, not an unrelated process that reused the pid).
alive() {
  local pid_file="$RUN_DIR/pids/$1.pid" pid
  [ -f "$pid_file" ] || return 1
  pid=$(cat "$pid_file")
  case "$(ps -o stat= -p "$pid" 2>/dev/null)" in "" | Z*) return 1 ;; esac
  ps -o args= -p "$pid" 2>/dev/null | grep -qF -- "$RUN_DIR/"
}

# launch NAME COMMAND...: starts a component in the background unless it is alive.
launch() {
  local name=$1; shift
  if alive "$name"; then
    echo "  $name: already running (pid $(cat "$RUN_DIR/pids/$name.pid"))"
    return 0
  fi
  local log="$RUN_DIR/logs/$name.log"
  [ -f "$log" ] && mv "$log" "$log.previous"
  nohup "$@" </dev/null >"$log" 2>&1 &
  echo $! >"$RUN_DIR/pids/$name.pid"
  echo "  $name: started (pid $!, log $log)"
}

# wait_ready NAME: waits for the component's `ready:` line; fails with its log tail.
wait_ready() {
  local name=$1 log="$RUN_DIR/logs/$1.log" waited=0
  [ -f "$log" ] || return 0 # left alone because it was running
  until grep -q '^ready: ' "$log"; do
    if ! alive "$name"; then
      tail -n 20 "$log" >&2
      fail "$name exited before it was ready (log: $log)"
    fi
    if [ "$waited" -ge $((READY_TIMEOUT_S * 10)) ]; then
      tail -n 20 "$log" >&2
      fail "$name not ready after ${READY_TIMEOUT_S}s (log: $log)"
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
}

tessera() { "$TESSERA_BIN" --log warn "$@"; }

echo "etcd on 127.0.0.1:$ETCD_PORT"
if ! alive etcd; then
  launch etcd "$ETCD_BIN" --name local --data-dir "$RUN_DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-cluster "local=http://127.0.0.1:$((ETCD_PORT + 1))"
  waited=0
  until tessera keyspace list --topo "$TOPO" >/dev/null 2>&1; do
    alive etcd || { tail -n 20 "$RUN_DIR/logs/etcd.log" >&2; fail "etcd exited"; }
    [ "$waited" -lt $((READY_TIMEOUT_S * 5)) ] || fail "etcd not answering after ${READY_TIMEOUT_S}s"
    sleep 0.2
    waited=$((waited + 1))
  done
else
  echo "  etcd: already running (pid $(cat "$RUN_DIR/pids/etcd.pid"))"
fi

if tessera keyspace list --topo "$TOPO" | awk 'NR > 1 { print $1 }' | grep -qx "$KEYSPACE"; then
  echo "keyspace $KEYSPACE exists"
else
  tessera keyspace create "$KEYSPACE" --shards "$SHARDS" --topo "$TOPO"
fi
mapfile -t shard_names < <(tessera shard list --keyspace "$KEYSPACE" --topo "$TOPO" | awk 'NR > 1 { print $1 }')
[ "${#shard_names[@]}" -gt 0 ] || fail "keyspace $KEYSPACE has no shards"

# One config file per component; each must pass --check-config before it is started.
fast_settings=""
if [ "$UNSAFE_FAST" = 1 ]; then
  fast_settings=$'sync_initdb = false\n\n[tablet.postgres.settings]\nfsync = "off"\n'
fi
tablet_ids=()
for shard_index in "${!shard_names[@]}"; do
  for ((replica = 0; replica < ZONES; replica++)); do
    zone="zone$((replica + 1))"
    id="$zone-$((100 * (shard_index + 1) + replica + 1))"
    index=$((shard_index * ZONES + replica))
    cat >"$RUN_DIR/config/tablet-$id.toml" <<EOF
topo = "$TOPO"

[tablet]
id = "$id"
zone = "$zone"
keyspace = "$KEYSPACE"
shard = "${shard_names[$shard_index]}"
pooler_port = $((BASE_PORT + 1000 + index))
grpc_port = $((BASE_PORT + 2000 + index))

[tablet.postgres]
port = $((BASE_PORT + index))
data_dir = "$RUN_DIR/$id/pgdata"
socket_dir = "$RUN_DIR/$id/run"
log_file = "$RUN_DIR/$id/postgres.log"
$fast_settings
EOF
    tablet_ids+=("$id")
  done
done
for ((zone_number = 1; zone_number <= ZONES; zone_number++)); do
  printf 'topo = "%s"\n\n[coordinator]\nzone = "zone%s"\n' "$TOPO" "$zone_number" \
    >"$RUN_DIR/config/coordinator-zone$zone_number.toml"
done
printf 'topo = "%s"\nmetrics_listen = "127.0.0.1:%s"\n\n[gate]\nlisten = "127.0.0.1:%s"\ngate_id = "gate1"\n' \
  "$TOPO" "$METRICS_PORT" "$GATE_PORT" >"$RUN_DIR/config/gate.toml"
for config in "$RUN_DIR"/config/*.toml; do
  component=$(basename "$config" .toml)
  component=${component%%-*}
  tessera "$component" --config "$config" --check-config >/dev/null
done

# Tablets in waves: the first tablet of every shard (zone1) starts first and, by the
# provisional bootstrap, claims its shard as primary; the other zones' tablets join as
# replicas. (Consensus, issue 4, replaces this bootstrap.)
echo "tablets"
for ((replica = 0; replica < ZONES; replica++)); do
  wave=()
  for shard_index in "${!shard_names[@]}"; do
    id=${tablet_ids[$((shard_index * ZONES + replica))]}
    launch "tablet-$id" "$TESSERA_BIN" tablet --config "$RUN_DIR/config/tablet-$id.toml"
    wave+=("tablet-$id")
  done
  for name in "${wave[@]}"; do wait_ready "$name"; done
done

echo "coordinators"
for ((zone_number = 1; zone_number <= ZONES; zone_number++)); do
  launch "coordinator-zone$zone_number" "$TESSERA_BIN" coordinator \
    --config "$RUN_DIR/config/coordinator-zone$zone_number.toml"
done
for ((zone_number = 1; zone_number <= ZONES; zone_number++)); do
  wait_ready "coordinator-zone$zone_number"
done

echo "gate"
launch gate "$TESSERA_BIN" gate --config "$RUN_DIR/config/gate.toml"
wait_ready gate

echo "ready: postgres://postgres:postgres@127.0.0.1:$GATE_PORT/$KEYSPACE"
echo "status: $TESSERA_BIN status --topo $TOPO"
echo "stop:   RUN_DIR=$RUN_DIR $here/stop.sh"
