#!/usr/bin/env bash
# A real Slurm cluster on this one machine, for vlstudio's Slurm tests (run as root; idempotent).
#
#   partition "debug" (default): this machine as one node, for the single-node tests;
#   partition "twonode": two nodes "vn1" and "vn2", each a slurmd in its own network namespace (own
#   veth address on 10.77.0.0/24, own hostname via a UTS namespace), joined by a bridge in the root
#   namespace, so srun and torchrun's rendezvous cross a real network between two "hosts".
#
# Installs Debian's slurm-wlm and munge with apt-get when missing, writes /etc/slurm/slurm.conf,
# starts munged, slurmctld and the three slurmd. Exits non-zero with the reason when anything fails;
# the tests call it too and fail (never skip) in that case.
set -euo pipefail

NET=10.77.0
BRIDGE=vlsbr0
CTL=$(hostname -s)
CONF=/etc/slurm/slurm.conf
LOGDIR=/var/log/slurm

if [ "$(id -u)" != 0 ]; then echo "slurm-setup: must run as root" >&2; exit 1; fi

install_packages() {
  if command -v sbatch >/dev/null && command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
      && command -v munged >/dev/null; then
    return
  fi
  # Another installer may hold the dpkg lock (CI installs several packages at once): wait for it.
  export DEBIAN_FRONTEND=noninteractive
  for _ in $(seq 60); do
    if apt-get install -y -q -o DPkg::Lock::Timeout=600 slurm-wlm munge; then return; fi
    apt-get update -q || true
    sleep 5
  done
  echo "slurm-setup: could not install slurm-wlm and munge" >&2
  exit 1
}

# has TEXT WORD: whether TEXT contains WORD (no pipe into `grep -q`: with pipefail its early exit
# would fail the command that writes into the pipe).
has() { case "$1" in *"$2"*) return 0 ;; *) return 1 ;; esac; }

setup_network() {
  # Bridge in the root namespace (the controller's side), one veth per node namespace.
  ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
  has "$(ip addr show dev "$BRIDGE")" "$NET.1/" || ip addr add "$NET.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  for i in 1 2; do
    local ns=vls-vn$i host_if=vlsh$i
    has "$(ip netns list)" "$ns" || ip netns add "$ns"
    if ! ip link show "$host_if" >/dev/null 2>&1; then
      ip link add "$host_if" type veth peer name eth0 netns "$ns"
    fi
    ip link set "$host_if" master "$BRIDGE"
    ip link set "$host_if" up
    has "$(ip -n "$ns" addr show dev eth0)" "$NET.1$i/" || ip -n "$ns" addr add "$NET.1$i/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    # Each "host" resolves the names as on a cluster: its own name to its own address, the
    # controller on the bridge (bind-mounted over /etc/hosts when its slurmd starts).
    mkdir -p "/etc/netns/$ns"
    printf '127.0.0.1 localhost\n%s.1 %s\n%s.11 vn1\n%s.12 vn2\n' "$NET" "$CTL" "$NET" "$NET" \
      > "/etc/netns/$ns/hosts"
  done
}

write_config() {
  local cpus mem_mb
  cpus=$(nproc)
  mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOGDIR"
  cat > "$CONF.new" <<EOF
# Written by vlstudio's .ci/slurm-setup.sh: a test cluster on one machine.
ClusterName=vlstudio-ci
SlurmctldHost=$CTL
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd-%n.log
# No cgroups in containers: track processes by parentage, no CPU binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
# A node set DOWN stays down until resumed (as after a real failure); an unresponsive one returns by itself.
ReturnToService=1
# Seconds between the SIGTERM of a time limit or scancel and the SIGKILL: time to checkpoint.
KillWait=30
MinJobAge=600
SlurmdTimeout=60
InactiveLimit=0
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGDIR/jobcomp.log
AccountingStorageType=accounting_storage/none
# Declared resources are trusted, so the netns "hosts" can share this machine's CPUs.
SlurmdParameters=config_overrides
NodeName=$CTL NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
NodeName=vn1 NodeAddr=$NET.11 NodeHostname=vn1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
NodeName=vn2 NodeAddr=$NET.12 NodeHostname=vn2 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$CTL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
PartitionName=twonode Nodes=vn1,vn2 MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
  if ! cmp -s "$CONF.new" "$CONF"; then
    mv "$CONF.new" "$CONF"
    CONFIG_CHANGED=1
  else
    rm -f "$CONF.new"
  fi
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_munge() {
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  [ -s /etc/munge/munge.key ] || { mungekey --create --force; chown munge:munge /etc/munge/munge.key; }
  if ! munge -n >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged --force
    sleep 1
  fi
  munge -n | unmunge >/dev/null
}

stop_daemon() {  # pidfile
  if running "$1"; then kill "$(cat "$1")"; for _ in $(seq 50); do running "$1" || break; sleep 0.2; done; fi
}

start_daemons() {
  if [ "${CONFIG_CHANGED:-0}" = 1 ]; then
    stop_daemon /run/slurmctld.pid
    for n in "$CTL" vn1 vn2; do stop_daemon "/run/slurmd-$n.pid"; done
  fi
  running /run/slurmctld.pid || /usr/sbin/slurmctld
  mkdir -p "/var/spool/slurmd/$CTL"
  running "/run/slurmd-$CTL.pid" || /usr/sbin/slurmd
  for i in 1 2; do
    # Own network namespace, own hostname (UTS namespace; slurmd finds its NodeName from it) and
    # own /etc/hosts (mount namespace). Not `ip netns exec`: it remounts /sys, hiding the cgroup
    # filesystem that slurmd insists on finding.
    mkdir -p "/var/spool/slurmd/vn$i"
    running "/run/slurmd-vn$i.pid" || nsenter --net="/run/netns/vls-vn$i" unshare --uts --mount sh -c \
      "mount --bind /etc/netns/vls-vn$i/hosts /etc/hosts && hostname vn$i && exec /usr/sbin/slurmd"
  done
}

wait_ready() {
  for _ in $(seq 60); do
    local idle
    idle=$(sinfo -h -N -o '%N %t' 2>/dev/null | grep -cE ' (idle|mix|alloc)$' || true)
    if [ "$idle" -ge 3 ]; then sinfo; return; fi
    # A node left down by an earlier run (e.g. "Not responding") is resumed once its slurmd is up.
    scontrol update nodename="$CTL,vn1,vn2" state=resume >/dev/null 2>&1 || true
    sleep 1
  done
  sinfo -N -l >&2 || true
  echo "slurm-setup: nodes did not become idle; see $LOGDIR/" >&2
  exit 1
}

install_packages
setup_network
write_config
start_munge
start_daemons
wait_ready
srun -p debug -N1 -n2 hostname
srun -p twonode -N2 -n2 hostname
