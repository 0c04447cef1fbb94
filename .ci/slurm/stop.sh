#!/usr/bin/env bash
# Stop the single-node Slurm started by start.sh (by pid files; jobs still running are killed).
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
if [ -s /run/slurmctld.pid ] && command -v scancel >/dev/null; then
  scancel --full --quiet --user="$(id -un)" 2>/dev/null || true  # only root's (our) jobs
fi
stop /run/slurmd.pid
stop /run/slurmctld.pid
stop /run/munge/munged.pid
echo "slurm: stopped"
