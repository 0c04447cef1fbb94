#!/usr/bin/env bash
# Install (if needed) and start a single-node Slurm on this machine, as root. Idempotent:
# daemons already running (by their pid files) are left alone.
#   bash .ci/slurm/start.sh      # then: sbatch, squeue, scancel work; partition "debug"
#   bash .ci/slurm/stop.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

# munge: the key is made by the package's postinst; make one if it is missing.
[ -s /etc/munge/munge.key ] || { mungekey --create --force 2>/dev/null || \
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; }
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
# /run/munge is made by systemd's tmpfiles on a normal boot; there is no systemd here.
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
alive /run/munge/munged.pid || runuser -u munge -- /usr/sbin/munged --force

# slurm.conf, with this node's real CPU count and memory (a node that claims more than it has
# is drained by slurmctld).
cpus=$(nproc)
mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
{
  cat "$here/slurm.conf"
  echo "NodeName=localhost NodeHostname=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN"
  echo "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP"
} >/etc/slurm/slurm.conf.new
mkdir -p /etc/slurm
restart=0
if ! cmp -s /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf; then restart=1; fi
mv /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf
mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
chown slurm:slurm /var/spool/slurmctld /var/log/slurm

if alive /run/slurmctld.pid && [ "$restart" = 1 ]; then scontrol reconfigure || true; fi
alive /run/slurmctld.pid || /usr/sbin/slurmctld
# The machine's hostname is not the node name: tell slurmd which node it is.
alive /run/slurmd.pid || /usr/sbin/slurmd -N localhost

for _ in $(seq 60); do
  state=$(sinfo -h -n localhost -o %T 2>/dev/null || true)
  case "$state" in idle*|mix*|alloc*) break ;; esac
  # A node left drained/down by an earlier run (e.g. killed daemons) is put back in service.
  case "$state" in drain*|down*) scontrol update nodename=localhost state=resume 2>/dev/null || true ;; esac
  sleep 1
done
sinfo
case "$(sinfo -h -n localhost -o %T)" in
  idle*|mix*|alloc*) echo "slurm: ready" ;;
  *) echo "slurm: node not ready" >&2; tail -20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2; exit 1 ;;
esac
