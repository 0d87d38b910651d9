#!/usr/bin/env bash
# Stop what .ci/slurm-up.sh started: cancel the jobs left, then slurmd, slurmctld and munged by
# the PIDs it recorded; remove the slurm.conf it wrote.
set -uo pipefail
STATE=${PAMC_SLURM_DIR:-/tmp/pamc-slurm}
CONF=/etc/slurm/slurm.conf
if command -v squeue >/dev/null && [ -f "$CONF" ]; then
  squeue -h -o %A 2>/dev/null | xargs -r scancel 2>/dev/null
fi
for daemon in slurmd slurmctld munged; do
  file="$STATE/$daemon.pid"
  [ -s "$file" ] || continue
  pid=$(cat "$file")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  fi
  rm -f "$file"
done
if [ -f "$CONF" ] && grep -qF "# written by pamc .ci/slurm-up.sh" "$CONF"; then rm -f "$CONF"; fi
echo "slurm-down: stopped"
