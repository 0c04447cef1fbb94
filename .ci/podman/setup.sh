#!/usr/bin/env bash
# Install podman (as root, from Debian's packages), make it run containers on this machine, and
# build the test images from this machine's own Python (no registry is reachable). Idempotent;
# images are cached by a hash of what goes into them.
#   bash .ci/podman/setup.sh        # then: podman run --rm localhost/fedcompute-test-shell:... sh
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v podman >/dev/null || ! command -v runc >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # runc: Debian 12's crun refuses this machine's hybrid cgroups ("cgroups in hybrid mode not
  # supported, drop all controllers from cgroupv2").
  apt-get install -y -qq --no-install-recommends podman runc >/dev/null
fi

# A probe image: one static-free shell is enough to see whether containers start at all.
probe() { podman run --rm --network host "$1" /bin/sh -c 'echo ok' 2>&1; }

tags=$(.venv/bin/python -m tests.endpoint.container_image 2>&1) || {
  echo "podman: building the test images failed:" >&2; echo "$tags" >&2; exit 1; }
shell_image=$(echo "$tags" | awk '$1 == "shell" {print $2}')

out=$(probe "$shell_image" || true)
if [ "$out" != ok ]; then
  # Sandboxes without CAP_SYS_RESOURCE cannot raise rlimits: podman's defaults (nofile 1M,
  # nproc above what podman itself keeps) fail with "setrlimit ...: Operation not permitted".
  # Keep this machine's limits and use runc; written only when the probe failed.
  echo "podman: first probe said: $out"
  nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
  [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ] && nproc=32768
  [ "$nofile" = unlimited ] && nofile=1048576
  mkdir -p /etc/containers
  cat >/etc/containers/containers.conf <<EOF
# Written by fedcompute's .ci/podman/setup.sh: this machine cannot raise rlimits, and crun
# refuses its hybrid cgroup layout.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
EOF
  out=$(probe "$shell_image" || true)
fi
if [ "$out" != ok ]; then
  echo "podman: containers do not start here: $out" >&2
  exit 1
fi
echo "$tags"
echo "podman: ready"
