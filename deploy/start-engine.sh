#!/usr/bin/env bash
# Make sure a Docker engine answers: install Debian's docker.io (and docker-compose) when missing,
# and start dockerd when no daemon answers. Exits non-zero, never quietly, when the engine cannot
# start.
#
# The engine is started so that it leaves the host's firewall and links alone: containers use host
# networking (docker-compose.test.yml), so no bridge, NAT or forwarding rule is needed. A default
# dockerd sets the iptables FORWARD policy to DROP and adds a docker0 bridge, which breaks traffic
# between network namespaces on the host (the suite's two-node Slurm test).
set -euo pipefail

LOG=${DOCKERD_LOG:-/var/log/dockerd-vlstudio.log}

engine_up() { docker info >/dev/null 2>&1; }

need_apt=()
command -v dockerd >/dev/null || need_apt+=(docker.io)
command -v docker-compose >/dev/null || need_apt+=(docker-compose)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
if [ ${#need_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q && apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi

if engine_up; then
  echo "docker engine: already running ($(docker version --format '{{.Server.Version}}'))"
  exit 0
fi

echo "docker engine: starting dockerd (log: $LOG)"
# setsid: the daemon outlives this script and the shell that ran it.
setsid dockerd --iptables=false --ip-forward=false --bridge=none --storage-driver=overlay2 \
  >>"$LOG" 2>&1 < /dev/null &
for _ in $(seq 60); do
  engine_up && break
  sleep 1
done
if ! engine_up; then
  echo "docker engine: dockerd did not come up within 60 s; the end of $LOG:" >&2
  tail -n 30 "$LOG" >&2 || true
  exit 1
fi
echo "docker engine: running ($(docker version --format '{{.Server.Version}}'))"
