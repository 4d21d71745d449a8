#!/usr/bin/env bash
# Is the `-M prepared` shortfall the proxy's relay, or the CPU it takes from PostgreSQL?
# Runs `pgbench -S -M prepared -c 16` against Tessera (1 shard), PgBouncer 1.18 in session mode
# and direct PostgreSQL, in alternating rounds, in two layouts of the same servers:
#
#   shared:  every process may run on both cores (what `compare` measures)
#   pinned:  the proxy (PgBouncer, or Tessera's cluster process) alone on core 1; every
#            PostgreSQL process and pgbench on core 0
#
# In the pinned layout neither proxy takes CPU from PostgreSQL, so the Tessera/PgBouncer ratio
# there shows the relay itself. docs/benchmarks.md ("Proxy on its own core") holds the figures.
#
#   bench/pinned.sh [rounds] [seconds]     # defaults: 8 rounds of 5 s per target and layout
#
# Needs pgbench, taskset (util-linux), two cores, and a release build of tessera-bench
# (cargo build --release -p tessera-bench).
set -euo pipefail

rounds=${1:-8}
seconds=${2:-5}
root=$(cd "$(dirname "$0")/.." && pwd)
bench=${TESSERA_BENCH_BIN:-"$root/target/release/tessera-bench"}
[ -x "$bench" ] || { echo "build first: cargo build --release -p tessera-bench" >&2; exit 1; }
[ "$(nproc)" -ge 2 ] || { echo "needs at least two cores" >&2; exit 1; }
for tool in pgbench taskset; do
    command -v "$tool" >/dev/null || { echo "$tool is missing" >&2; exit 1; }
done

log=$(mktemp /tmp/tessera-pinned.XXXXXX)
cleanup() { pkill -INT -f "tessera-bench serve --targets direct,tessera-1sh" 2>/dev/null || true; }
trap cleanup EXIT
(cd "$root" && "$bench" serve --targets direct,tessera-1sh,pgbouncer-session > "$log" 2>&1 &)
for _ in $(seq 300); do grep -q "serving until" "$log" && break; sleep 1; done
grep -q "serving until" "$log" || { cat "$log" >&2; exit 1; }

port_of() { grep -oP "^$1 +pid [0-9]+ +postgres://[^@]+@127.0.0.1:\K[0-9]+" "$log" | tail -1; }
pid_of() { grep -oP "^$1 +pid \K[0-9]+" "$log" | tail -1; }
declare -A port=([tessera]=$(port_of tessera-1sh) [pgbouncer]=$(port_of pgbouncer-session)
    [direct]=$(port_of direct))
proxies="$(pid_of tessera-1sh) $(pid_of pgbouncer-session)"

# place PG_CPUS PROXY_CPUS: pins every PostgreSQL process (postmasters too, so new backends
# inherit it) and every thread of both proxies.
place() {
    for pid in $(pgrep -x postgres); do taskset -a -p -c "$1" "$pid" >/dev/null; done
    for pid in $proxies; do taskset -a -p -c "$2" "$pid" >/dev/null; done
}

export PGPASSWORD=postgres
tps() {
    taskset -c "$1" pgbench -n -S -M prepared -c 16 -j 2 -T "$seconds" \
        "postgres://postgres:postgres@127.0.0.1:${port[$2]}/app" 2>&1 |
        grep -oP 'tps = \K[0-9]+'
}

# median of the numbers on stdin
median() { sort -n | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

declare -A ratios
for round in $(seq "$rounds"); do
    for layout in shared pinned; do
        if [ "$layout" = pinned ]; then place 0 1; client_cpus=0; else place 0-1 0-1; client_cpus=0-1; fi
        t=$(tps "$client_cpus" tessera)
        b=$(tps "$client_cpus" pgbouncer)
        d=$(tps "$client_cpus" direct)
        tb=$(awk -v a="$t" -v b="$b" 'BEGIN {printf "%.2f", a / b}')
        td=$(awk -v a="$t" -v b="$d" 'BEGIN {printf "%.2f", a / b}')
        bd=$(awk -v a="$b" -v b="$d" 'BEGIN {printf "%.2f", a / b}')
        ratios[$layout,tb]+="$tb "
        ratios[$layout,td]+="$td "
        ratios[$layout,bd]+="$bd "
        printf 'round %d %-6s  tessera %6d  pgbouncer-session %6d  direct %6d  tessera/pgbouncer %s  tessera/direct %s  pgbouncer/direct %s\n' \
            "$round" "$layout" "$t" "$b" "$d" "$tb" "$td" "$bd"
    done
done
place 0-1 0-1

echo
echo "medians over $rounds rounds (pgbench -S -M prepared -c 16, ${seconds} s runs):"
for layout in shared pinned; do
    summary=""
    for pair in tb:tessera/pgbouncer td:tessera/direct bd:pgbouncer/direct; do
        key=${pair%%:*}
        values=$(tr ' ' '\n' <<< "${ratios[$layout,$key]}" | grep .)
        summary+="  ${pair#*:} $(median <<< "$values")x [$(sort -n <<< "$values" | head -1)–$(sort -n <<< "$values" | tail -1)]"
    done
    echo "$layout:$summary"
done
