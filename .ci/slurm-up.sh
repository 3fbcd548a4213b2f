#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the tests marked `slurm` (tests/test_slurm.py):
# installs Debian's slurm-wlm and munge if they are absent, writes a minimal /etc/slurm/slurm.conf (this
# machine as its only node, accounting off), starts munged, slurmctld and slurmd, and waits until sinfo
# shows the node idle. Run as root on a Debian/Ubuntu CI machine; .ci/slurm-down.sh stops it again.
# Exits non-zero with one line saying why when the cluster could not be brought up (.ci/run then runs
# the tests anyway; the slurm tests skip). A slurm.conf this script did not write is never replaced.
set -euo pipefail

MARKER="# written by ablate's .ci/slurm-up.sh"
CONF=/etc/slurm/slurm.conf
STATE=/var/lib/ablate-slurm
LOGS=/var/log/ablate-slurm
# Seconds to wait for the node to come up idle (it takes a few on 2 cores).
READY_TIMEOUT_S=${SLURM_READY_TIMEOUT_S:-60}

fail() {
    echo "slurm-up: $*" >&2
    exit 1
}

[ "$(id -u)" = 0 ] || fail "needs root (it installs packages and starts the SLURM daemons as root)"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sinfo >/dev/null \
    || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || fail "slurm-wlm and munge are not installed and there is no apt-get to install them"
    echo "slurm-up: installing slurm-wlm and munge (apt's output: $LOGS/apt.log)"
    mkdir -p "$LOGS"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >"$LOGS/apt.log" 2>&1 || fail "apt-get update failed: $(tail -n 1 "$LOGS/apt.log")"
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >>"$LOGS/apt.log" 2>&1 \
        || fail "apt-get install slurm-wlm munge failed: $(tail -n 1 "$LOGS/apt.log")"
fi

if [ -e "$CONF" ] && ! head -n 1 "$CONF" | grep -qF "$MARKER"; then
    fail "$CONF exists and was not written by this script; not replacing it"
fi

# This machine as the node, as slurmd itself sees it (CPUs, sockets, cores, memory): a node configured
# larger than it is would be drained.
node=$(slurmd -C | head -n 1) || fail "slurmd -C could not describe this machine"
case "$node" in NodeName=*) ;; *) fail "slurmd -C printed no NodeName line: $node" ;; esac
host=$(hostname -s)

mkdir -p /etc/slurm "$STATE/ctld" "$STATE/d" "$LOGS"
cat >"$CONF" <<EOF
$MARKER: a one-node test cluster; .ci/slurm-down.sh stops it.
ClusterName=ablate-ci
SlurmctldHost=$host
# Jobs run as root (CI); the daemons too, so no slurm user or file ownership is needed.
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits cred_expire seconds before it may start again (default 120): 20 keeps the
# preemption test short while leaving a loaded 2-core machine time to launch a job step.
AuthInfo=cred_expire=20
# No cgroups: a container or VM without a delegated cgroup tree still runs jobs.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
# CPUs are the consumable resource, so two one-CPU jobs of an array run side by side.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# Accounting off: no slurmdbd (sacct then answers with an error, which submitit tolerates).
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
# Short timeouts: a test cluster that forgets a finished job after five minutes and notices a dead
# slurmd within half a minute.
SlurmctldTimeout=30
SlurmdTimeout=30
MinJobAge=300
KillWait=10
ReturnToService=2
$node State=UNKNOWN
PartitionName=ci Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

# munged: its key comes with the package; it runs as the munge user the package created.
mkdir -p /run/munge
chown munge:munge /run/munge 2>/dev/null || true
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    [ -s /etc/munge/munge.key ] || { mungekey --create >/dev/null 2>&1 || create-munge-key -f >/dev/null 2>&1; }
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    runuser -u munge -- munged || fail "munged did not start (see /var/log/munge/munged.log)"
fi

# Fresh daemons with a clean state (-c: no jobs or node states from an earlier run). The pid is
# read once: a stopping daemon removes its pid file.
alive() { # a process that has not exited (an exited one may stay a zombie where PID 1 reaps none)
    local state
    state=$(ps -o stat= -p "$1" 2>/dev/null) && [ "${state:0:1}" != Z ]
}
for pidfile in "$STATE/slurmd.pid" "$STATE/slurmctld.pid"; do
    pid=$(cat "$pidfile" 2>/dev/null) || continue
    alive "$pid" || continue
    kill "$pid"
    for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
    alive "$pid" && fail "could not stop the running $(basename "$pidfile" .pid) ($pid)"
done
slurmctld -c || fail "slurmctld did not start (see $LOGS/slurmctld.log)"
slurmd || fail "slurmd did not start (see $LOGS/slurmd.log)"

for _ in $(seq $((READY_TIMEOUT_S * 2))); do
    if [ "$(sinfo -h -N -n "$host" -o %t 2>/dev/null)" = idle ]; then
        echo "slurm-up: node $host idle in partition ci ($(sinfo -h -N -n "$host" -o '%c CPUs, %m MB'))"
        exit 0
    fi
    sleep 0.5
done
fail "node $host not idle after ${READY_TIMEOUT_S}s: $(sinfo -h -N -o '%N %t %E' 2>&1 | head -n 1) (see $LOGS/)"
