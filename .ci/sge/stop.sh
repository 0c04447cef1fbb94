#!/usr/bin/env bash
# Stop the single-node Grid Engine started by start.sh (by pid files; running jobs are killed).
set -uo pipefail
stop() {  # pidfile
  [ -s "$1" ] || return 0
  local pid; pid=$(cat "$1")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$1"
}
if command -v qdel >/dev/null && [ -s /var/spool/gridengine/qmaster/qmaster.pid ]; then
  qdel -u "$(id -un)" >/dev/null 2>&1 || true   # only root's (our) jobs
fi
stop /var/spool/gridengine/execd/localhost/execd.pid
stop /var/spool/gridengine/qmaster/qmaster.pid
echo "sge: stopped"
