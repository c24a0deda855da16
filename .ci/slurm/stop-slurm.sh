#!/usr/bin/env bash
# Stop the daemons that .ci/slurm/setup-slurm.sh started, by the PIDs it recorded, newest first.
# Daemons it did not start (no PID file of ours) are left alone. Safe to call twice, or when nothing
# was started (CI calls it from an EXIT trap).
#
# Settings (environment):
#   SLURM_STATE=/tmp/occfusion-slurm     where setup-slurm.sh recorded the PIDs
#   SLURM_STOP_ONLY="slurmd slurmctld"   stop only these (setup-slurm.sh uses it to restart)
set -uo pipefail

STATE=${SLURM_STATE:-/tmp/occfusion-slurm}
DAEMONS=${SLURM_STOP_ONLY:-slurmd slurmctld munged}

for name in $DAEMONS; do
    pidfile="$STATE/pids/$name.pid"
    [ -s "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    # only signal the PID if it is still the daemon we started (PIDs get reused)
    if kill -0 "$pid" 2>/dev/null && grep -q "$name" "/proc/$pid/comm" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "stop-slurm: $name ($pid) ignored SIGTERM for 10 s; sending SIGKILL" >&2
            kill -KILL "$pid"
        fi
        echo "stop-slurm: stopped $name ($pid)"
    fi
    rm -f "$pidfile"
done
# slurmctld runs as 'slurm' and cannot remove its root-owned pid file; a stale one breaks the next
# start and Debian's package scripts (apt-get remove calls invoke-rc.d stop on it)
if ! pgrep -F /run/slurmctld.pid >/dev/null 2>&1; then rm -f /run/slurmctld.pid; fi
exit 0
