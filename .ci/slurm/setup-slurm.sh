#!/usr/bin/env bash
# Start a real single-node SLURM cluster on this machine, for tests/test_slurm.py.
#
#   sudo bash .ci/slurm/setup-slurm.sh      # idempotent: a second call checks and returns
#   sudo bash .ci/slurm/stop-slurm.sh       # stops what this script started, by PID
#
# Debian's packages (slurmctld, slurmd, slurm-client, munge; SLURM 22.05 on Debian 12) run as plain
# daemons, no systemd. The node declares FAKE_GPUS generic resources "gpu" backed by /dev/null, so
# rules with `resources: gpu=1` are submitted with `--gpus=1` and scheduled like on a GPU cluster
# (nothing can compute on them). No slurmdbd, so no sacct: profiles/slurm polls with squeue, which
# needs finished jobs to stay visible for a while (MinJobAge below).
#
# Settings (environment):
#   FAKE_GPUS=1            GPUs the node declares (0 = no GRES at all)
#   SLURM_STATE=/tmp/occfusion-slurm   PID files and daemon logs of this script
#   SLURM_READY_TIMEOUT=60 seconds to wait for the node to accept jobs
# Needs root (apt-get, daemons, /etc/slurm). Design notes: shared/design/slurm-local.md.
set -euo pipefail

FAKE_GPUS=${FAKE_GPUS:-1}
STATE=${SLURM_STATE:-/tmp/occfusion-slurm}
READY_TIMEOUT=${SLURM_READY_TIMEOUT:-60}
PACKAGES=(slurmctld slurmd slurm-client munge)

say() { echo "setup-slurm: $*"; }
die() { echo "setup-slurm: ERROR: $*" >&2; exit 1; }
started_at=$(date +%s)

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts daemons)"
mkdir -p "$STATE/pids"

# Is the daemon whose PID we recorded (or whose pid file it wrote) alive?
alive() {  # alive NAME PIDFILE
    local pid=""
    [ -s "$STATE/pids/$1.pid" ] && pid=$(cat "$STATE/pids/$1.pid")
    [ -z "$pid" ] && [ -s "$2" ] && pid=$(cat "$2")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# Wait until a command succeeds, at most $1 seconds.
wait_for() {  # wait_for SECONDS CMD...
    local deadline=$(( $(date +%s) + $1 )); shift
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

# Record the PID a daemon wrote to its own pid file (they daemonise themselves).
record_pid() {  # record_pid NAME PIDFILE
    wait_for 10 test -s "$2" || die "$1 did not write $2 (see its log)"
    cat "$2" > "$STATE/pids/$1.pid"
}

# ---- 1. packages -----------------------------------------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---- 2. configuration (rewritten only when it changes; a change restarts the SLURM daemons) -------
host=$(hostname -s)
# the node's topology exactly as slurmd detects it (a mismatch logs warnings or drains the node)
topology=$(slurmd -C | head -1 | tr ' ' '\n' \
    | grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=' | tr '\n' ' ')
mem_mb=$(( $(awk '/^MemTotal/ {print $2}' /proc/meminfo) / 1024 * 90 / 100 ))  # <= what slurmd sees

gres_types="" node_gres=""
if [ "$FAKE_GPUS" -gt 0 ]; then
    if [ "$FAKE_GPUS" -eq 1 ]; then
        gpu_files=/dev/null
    else  # one character device per GPU (the same device as /dev/null) so CUDA_VISIBLE_DEVICES is set
        for i in $(seq 0 $((FAKE_GPUS - 1))); do [ -e "/dev/fakegpu$i" ] || mknod "/dev/fakegpu$i" c 1 3; done
        gpu_files="/dev/fakegpu[0-$((FAKE_GPUS - 1))]"
    fi
    gres_types="GresTypes=gpu"
    node_gres="Gres=gpu:$FAKE_GPUS"
fi

new_conf=$(mktemp)
new_gres=$(mktemp)
trap 'rm -f "$new_conf" "$new_gres"' EXIT
cat > "$new_conf" <<EOF
# Written by .ci/slurm/setup-slurm.sh (single-node test cluster). Do not edit: rerun the script.
ClusterName=occfusion-ci
SlurmctldHost=$host
AuthType=auth/munge
CredType=cred/munge
SlurmUser=slurm
SlurmdUser=root
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# no cgroups needed: processes tracked through /proc, no core binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# a job without --mem would otherwise take the whole node and jobs would run one at a time
DefMemPerCPU=1000
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
$gres_types
# finished jobs stay visible to squeue/scontrol for 5 minutes: Snakemake's squeue status mode needs
# MinJobAge >= 3 x slurm-init-seconds-before-status-checks, and the test reads the jobs back
MinJobAge=300
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
Waittime=0
NodeName=$host ${topology}RealMemory=$mem_mb $node_gres State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
if [ "$FAKE_GPUS" -gt 0 ]; then
    printf 'AutoDetect=off\nNodeName=%s Name=gpu File=%s\n' "$host" "$gpu_files" > "$new_gres"
fi

changed=0
if ! cmp -s "$new_conf" /etc/slurm/slurm.conf; then
    install -m 644 "$new_conf" /etc/slurm/slurm.conf; changed=1
fi
if [ "$FAKE_GPUS" -gt 0 ]; then
    cmp -s "$new_gres" /etc/slurm/gres.conf || { install -m 644 "$new_gres" /etc/slurm/gres.conf; changed=1; }
elif [ -e /etc/slurm/gres.conf ]; then
    rm -f /etc/slurm/gres.conf; changed=1
fi
# SLURM 22.05 has no "CgroupPlugin=disabled": without cgroups there must be no cgroup.conf at all
[ -e /etc/slurm/cgroup.conf ] && { rm -f /etc/slurm/cgroup.conf; changed=1; }
mkdir -p /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
chown -R slurm:slurm /var/lib/slurm/slurmctld /var/log/slurm

if [ "$changed" = 1 ] && { alive slurmctld /run/slurmctld.pid || alive slurmd /run/slurmd.pid; }; then
    say "configuration changed: restarting the SLURM daemons"
    SLURM_STATE="$STATE" SLURM_STOP_ONLY="slurmd slurmctld" bash "$(dirname "$0")/stop-slurm.sh"
fi

# ---- 3. munge (authentication between the daemons and the clients) ---------------------------------
[ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
install -d -o munge -g munge -m 755 /run/munge /var/log/munge /var/lib/munge
munge_ok() { munge -n | unmunge; }
if ! munge_ok >/dev/null 2>&1; then
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged --force
    record_pid munged /run/munge/munged.pid
    wait_for 10 munge_ok || die "munged does not answer (see /var/log/munge/munged.log)"
fi

# ---- 4. slurmctld, then slurmd ---------------------------------------------------------------------
if ! alive slurmctld /run/slurmctld.pid; then
    # it runs as 'slurm' and cannot remove its root-owned pid file when it exits: clear a stale one
    rm -f /run/slurmctld.pid
    # -c: clean start (no node state restored from an older configuration), -i: ignore state errors
    /usr/sbin/slurmctld -c -i
    record_pid slurmctld /run/slurmctld.pid
fi
wait_for 20 sh -c 'scontrol ping | grep -q UP' || die "slurmctld is not up (see /var/log/slurm/slurmctld.log)"
if ! alive slurmd /run/slurmd.pid; then
    rm -f /run/slurmd.pid
    /usr/sbin/slurmd
    record_pid slurmd /run/slurmd.pid
fi

node_ready() { sinfo -h -N -o '%t' | grep -qE '^(idle|mix|alloc)'; }
if ! wait_for "$READY_TIMEOUT" node_ready; then
    # a node drained by an earlier bad configuration comes back with resume
    scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
    wait_for 10 node_ready || {
        sinfo -N -o '%N %t %E' >&2
        die "node $host is not accepting jobs (see /var/log/slurm/slurmd.log)"
    }
fi

sinfo -N -o '%N %P %t cpus=%c mem=%m gres=%G'
say "ready in $(( $(date +%s) - started_at )) s (pids and logs under $STATE)"
