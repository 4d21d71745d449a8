#!/usr/bin/env bash
# Stops the cluster started by deploy/local/start.sh: the gate first (clients get a clean
# shutdown), then coordinators, then tablets (each stops its PostgreSQL), then etcd.
# Each process gets SIGTERM and up to STOP_TIMEOUT_S seconds, then SIGKILL.
#
# Settings: RUN_DIR (default ./tessera-run), STOP_TIMEOUT_S (default 60).
set -euo pipefail

RUN_DIR=${RUN_DIR:-./tessera-run}
[ -d "$RUN_DIR" ] || { echo "stop.sh: no run dir $RUN_DIR: nothing to stop"; exit 0; }
RUN_DIR=$(cd "$RUN_DIR" && pwd)
STOP_TIMEOUT_S=${STOP_TIMEOUT_S:-60}
pids="$RUN_DIR/pids"
[ -d "$pids" ] || { echo "stop.sh: no $pids: nothing to stop"; exit 0; }

# running PID: the process exists and is not a zombie.
running() {
  case "$(ps -o stat= -p "$1" 2>/dev/null)" in "" | Z*) return 1 ;; *) return 0 ;; esac
}

# stop NAME: SIGTERM, wait, SIGKILL if needed, remove the pid file.
stop() {
  local name=$1 pid_file="$pids/$1.pid" pid waited=0
  [ -f "$pid_file" ] || return 0
  pid=$(cat "$pid_file")
  # Only a live process of this run dir: the pid may have been reused since.
  if ps -o args= -p "$pid" 2>/dev/null | grep -qF -- "$RUN_DIR/"; then
    kill -TERM "$pid"
    while running "$pid"; do
      if [ "$waited" -ge $((STOP_TIMEOUT_S * 10)) ]; then
        echo "  $name: no exit after ${STOP_TIMEOUT_S}s; killing" >&2
        kill -KILL "$pid" 2>/dev/null || true
        break
      fi
      sleep 0.1
      waited=$((waited + 1))
    done
    echo "  $name: stopped (pid $pid)"
  else
    echo "  $name: not running"
  fi
  rm -f "$pid_file"
}

shopt -s nullglob
for pid_file in "$pids"/gate.pid "$pids"/coordinator-*.pid "$pids"/tablet-*.pid "$pids"/etcd.pid; do
  stop "$(basename "$pid_file" .pid)"
done
