#!/usr/bin/env bash
# Install (if needed) and start a single-node Grid Engine (Debian's gridengine-* 8.1.9) on this
# machine, as root, with one queue "all.q" on host "localhost". Idempotent: daemons already
# running (by their pid files) are left alone.
#   bash .ci/sge/start.sh        # then: qsub, qstat, qdel work
#   bash .ci/sge/stop.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
common=$SGE_ROOT/$SGE_CELL/common
qmaster_pid=/var/spool/gridengine/qmaster/qmaster.pid
execd_pid=/var/spool/gridengine/execd/localhost/execd.pid

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
# Run quietly; print the output only when the command fails.
quiet() { local out; out=$("$@" 2>&1) || { echo "$out" >&2; return 1; }; }

if ! command -v sge_qmaster >/dev/null || ! command -v sge_execd >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  # The packages ask for the master's host name; without it act_qmaster is left empty.
  debconf-set-selections <<'SEL'
gridengine-common shared/gridengineconfig boolean true
gridengine-common shared/gridenginecell string default
gridengine-common shared/gridenginemaster string localhost
gridengine-master shared/gridenginemaster string localhost
gridengine-exec shared/gridenginemaster string localhost
gridengine-client shared/gridenginemaster string localhost
SEL
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends gridengine-master gridengine-exec \
    gridengine-client >/dev/null
fi

# Host names: the machine's name (e.g. "vm") and 127.0.0.1's name ("localhost") differ, and
# SGE's commlib refuses a client whose resolved name differs from the name it claims
# ("access denied (client IP resolved to host name "localhost". This is not identical to
# clients host name "vm")"). host_aliases makes them one host, called localhost.
echo localhost >"$common/act_qmaster"
aliases="localhost $(hostname)"
[ "$(hostname)" = localhost ] && aliases=localhost
echo "$aliases" >"$common/host_aliases"
chown sgeadmin:sgeadmin "$common/act_qmaster" "$common/host_aliases"
mkdir -p /var/run/gridengine /var/spool/gridengine/execd
chown sgeadmin:sgeadmin /var/run/gridengine /var/spool/gridengine/execd

if ! alive "$qmaster_pid"; then
  /usr/sbin/sge_qmaster
  for _ in $(seq 30); do qstat >/dev/null 2>&1 && break; sleep 1; done
fi
qstat >/dev/null || { echo "sge: qmaster does not answer" >&2;
                      tail -20 /var/spool/gridengine/qmaster/messages >&2; exit 1; }

# Global configuration: allow root's jobs (CI runs as root; the default min_uid is 1000),
# report load often; the scheduler runs every second instead of every 15.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
qconf -sconf global >"$tmp/global"
sed -i -e 's/^min_uid .*/min_uid 0/' -e 's/^min_gid .*/min_gid 0/' \
       -e 's/^load_report_time .*/load_report_time 00:00:05/' "$tmp/global"
# qconf -Mconf takes the configuration's name from the file's name.
(cd "$tmp" && quiet qconf -Mconf global)
qconf -ssconf >"$tmp/sconf"
sed -i -e 's/^schedule_interval .*/schedule_interval 0:0:1/' \
       -e 's/^flush_submit_sec .*/flush_submit_sec 1/' \
       -e 's/^flush_finish_sec .*/flush_finish_sec 1/' "$tmp/sconf"
quiet qconf -Msconf "$tmp/sconf"
qconf -sh 2>/dev/null | grep -qx localhost || quiet qconf -ah localhost
qconf -ss 2>/dev/null | grep -qx localhost || quiet qconf -as localhost

# The execution daemon registers itself as execution host (localhost is an admin host).
alive "$execd_pid" || /usr/sbin/sge_execd
for _ in $(seq 30); do qconf -sel 2>/dev/null | grep -qx localhost && break; sleep 1; done

sed "s/^slots .*/slots                 $(nproc)/" "$here/all.q" >"$tmp/all.q"
if qconf -sq all.q >/dev/null 2>&1; then
  quiet qconf -Mq "$tmp/all.q"
else
  quiet qconf -Aq "$tmp/all.q"
fi
qmod -c 'all.q@localhost' >/dev/null 2>&1 || true   # clear an error state left by an earlier run
for _ in $(seq 30); do
  qstat -f -q all.q 2>/dev/null | grep -q 'all.q@localhost.*lx-' && \
    ! qstat -f -q all.q | grep -E 'all.q@localhost' | grep -qE ' (a|u|E|d|au)$' && break
  sleep 1
done
qstat -f
qstat -f -q all.q | grep -E '^all.q@localhost' | grep -qE ' (u|au|E|d)$' && {
  echo "sge: queue not ready" >&2; exit 1; }
echo "sge: ready"
