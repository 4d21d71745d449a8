#!/usr/bin/env bash
# Instructions per `pgbench -S -M prepared` transaction, counted by callgrind: unlike TPS on a
# shared 2-core machine, the count does not move with the load. docs/benchmarks.md
# ("Instruction counts") explains the method and holds the figures.
#
#   bench/callgrind.sh tessera     # the cluster process: gate, in-process tablet pool, coordinator
#   bench/callgrind.sh pgbouncer   # PgBouncer 1.18 in session mode, for comparison
#
# Needs valgrind (apt-get install -y valgrind), pgbench, and a release build of tessera-bench
# (cargo build --release -p tessera-bench). Prints one line: transactions, busy and idle
# instructions, and (busy - idle) / transactions.
set -euo pipefail

target=${1:?usage: bench/callgrind.sh tessera|pgbouncer [seconds]}
seconds=${2:-20}
root=$(cd "$(dirname "$0")/.." && pwd)
bench=${TESSERA_BENCH_BIN:-"$root/target/release/tessera-bench"}
[ -x "$bench" ] || { echo "build first: cargo build --release -p tessera-bench" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "valgrind is missing: apt-get install -y valgrind" >&2; exit 1; }

work=$(mktemp -d /tmp/tessera-callgrind.XXXXXX)
chmod 755 "$work"
export PGPASSWORD=postgres
cleanup() {
    pkill -INT -f "tessera-bench serve --targets pgbouncer-session" 2>/dev/null || true
    exec 3>&- 2>/dev/null || true
}
trap cleanup EXIT

# as_owner CMD...: runs CMD as the user that owns the measured process (PgBouncer refuses root).
as_owner() { if [ "$target" = pgbouncer ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

case "$target" in
tessera)
    base_port=$((36000 + RANDOM % 2000))
    # The cluster runs until its stdin closes: a FIFO this script holds open.
    mkfifo "$work/stdin"
    valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
        "$bench" cluster --data-dir "$work/cluster" --shards 1 --replicas 1 --base-port "$base_port" \
        < "$work/stdin" > "$work/ready.txt" 2> "$work/valgrind.log" &
    exec 3> "$work/stdin"
    for _ in $(seq 300); do grep -q "port=" "$work/ready.txt" && break; sleep 1; done
    port=$(grep -oP 'port=\K[0-9]+' "$work/ready.txt")
    pid=$(grep -oP 'pid=\K[0-9]+' "$work/ready.txt")
    url="postgres://postgres:postgres@127.0.0.1:$port/app"
    for _ in $(seq 120); do psql -qtA "$url" -c "SELECT 1" >/dev/null 2>&1 && break; sleep 2; done
    psql -q "$url" \
        -c "CREATE TABLE pgbench_branches (bid int PRIMARY KEY, bbalance int, filler char(88))" \
        -c "CREATE TABLE pgbench_tellers (tid int PRIMARY KEY, bid int, tbalance int, filler char(84))" \
        -c "CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84))" \
        -c "CREATE TABLE pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22))"
    # One shard: load straight into its PostgreSQL (loading through the gate under valgrind is slow).
    psql -q -h 127.0.0.1 -p "$base_port" -U postgres app \
        -c "INSERT INTO pgbench_branches VALUES (1, 0, '')" \
        -c "INSERT INTO pgbench_accounts SELECT g, 1, 0, '' FROM generate_series(1, 100000) g" \
        -c "VACUUM ANALYZE"
    ;;
pgbouncer)
    (cd "$root" && "$bench" serve --targets pgbouncer-session > "$work/serve.log" 2>&1 &)
    for _ in $(seq 120); do grep -q "serving until" "$work/serve.log" && break; sleep 1; done
    ini=$(ps -eo args | grep -oP 'pgbouncer \K/tmp/tbench-[0-9]+/pgbouncer-session/pgbouncer.ini' | head -1)
    port=$((38000 + RANDOM % 2000))
    sed -e "s|^listen_port = .*|listen_port = $port|" -e "s|^unix_socket_dir = .*|unix_socket_dir = $work|" \
        -e "s|^logfile = .*|logfile = $work/pgbouncer.log|" -e "s|^pidfile = .*|pidfile = $work/pgbouncer.pid|" \
        "$ini" > "$work/pgbouncer.ini"
    chown -R postgres "$work"
    runuser -u postgres -- valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
        /usr/sbin/pgbouncer "$work/pgbouncer.ini" > "$work/valgrind.log" 2>&1 &
    for _ in $(seq 30); do [ -s "$work/pgbouncer.pid" ] && break; sleep 1; done
    pid=$(cat "$work/pgbouncer.pid")
    url="postgres://postgres:postgres@127.0.0.1:$port/app"
    ;;
*)
    echo "unknown target $target (tessera or pgbouncer)" >&2
    exit 2
    ;;
esac

pgbench -n -S -M prepared -c 4 -j 1 -T 5 "$url" > /dev/null
as_owner callgrind_control -z "$pid" > /dev/null
transactions=$(pgbench -n -S -M prepared -c 4 -j 1 -T "$seconds" "$url" |
    grep -oP 'actually processed: \K[0-9]+')
as_owner callgrind_control -d "$pid" > /dev/null
as_owner callgrind_control -z "$pid" > /dev/null
sleep "$seconds"
as_owner callgrind_control -d "$pid" > /dev/null
as_owner callgrind_control -k "$pid" > /dev/null || true
sleep 2
busy=$(grep -oP '^summary: \K[0-9]+' "$work/cg.out.1")
idle=$(grep -oP '^summary: \K[0-9]+' "$work/cg.out.2")
echo "$target: $transactions transactions in ${seconds} s; busy $busy, idle $idle instructions;" \
    "$(((busy - idle) / transactions)) per transaction (profiles in $work)"
