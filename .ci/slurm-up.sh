#!/usr/bin/env bash
# A one-node Slurm cluster on this machine for the Slurm tests (tests/test_grid_slurm.py), started
# by hand: CI machines have no systemd, and Debian's packages do not start their services on
# install.  Installs Debian's slurmctld, slurmd, slurm-client and munge where missing (as root),
# writes a minimal /etc/slurm/slurm.conf, starts munged, slurmctld and slurmd and waits until
# `sinfo` shows the node idle.  `.ci/slurm-down.sh` stops exactly the daemons started here (by the
# PIDs recorded in $PAMC_SLURM_DIR) and removes the config.  Exit status 0: the cluster is up;
# anything else: it is not, and the Slurm tests will skip, saying why.
set -euo pipefail
STATE=${PAMC_SLURM_DIR:-/tmp/pamc-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by pamc .ci/slurm-up.sh"

if [ "$(id -u)" != 0 ]; then echo "slurm-up: needs root (installs packages, starts daemons)" >&2; exit 1; fi
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sinfo >/dev/null \
   || ! command -v munged >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi
if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
  echo "slurm-up: $CONF exists and was not written by this script; leaving this machine's Slurm alone" >&2; exit 1
fi
if [ -f "$CONF" ] && [ "$(sinfo -h -o %T 2>/dev/null)" = idle ]; then
  echo "slurm-up: already up (stop with .ci/slurm-down.sh)"; exit 0
fi

mkdir -p "$STATE"/state "$STATE"/spool /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
fi

NODE=$(hostname -s)
CPUS=$(nproc)
# RealMemory no larger than the machine's (slurmd refuses a node with less memory than configured)
MEM=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) * 9 / 10 ))
mkdir -p "$(dirname "$CONF")"
cat > "$CONF" <<CONFIG
$MARK
ClusterName=pamc-ci
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
# a requeued job waits cred_expire + 1 s (default 120) before it starts again
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MailProg=/bin/true
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=2,sched_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait=10
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONFIG

runuser -u munge -- /usr/sbin/munged
cp /run/munge/munged.pid "$STATE/munged.pid"
/usr/sbin/slurmctld -c -i
/usr/sbin/slurmd -c

for _ in $(seq 1 60); do
  state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
  if [ "$state" = idle ]; then
    echo "slurm-up: node $NODE idle ($CPUS CPUs, ${MEM} MB); stop with .ci/slurm-down.sh"
    exit 0
  fi
  sleep 1
done
echo "slurm-up: node $NODE not idle after 60 s (state '${state:-none}'); see $STATE/*.log" >&2
exit 1
