#!/usr/bin/env bash
# Stops the one-node cluster .ci/slurm-up.sh started: cancels its jobs, then stops slurmd, slurmctld
# and munged (each by the pid it recorded). Packages and /etc/slurm/slurm.conf stay, so the next
# slurm-up.sh skips the install. Does nothing to a SLURM this script's partner did not configure.
set -uo pipefail

MARKER="# written by ablate's .ci/slurm-up.sh"
CONF=/etc/slurm/slurm.conf
STATE=/var/lib/ablate-slurm

if ! { [ -e "$CONF" ] && head -n 1 "$CONF" | grep -qF "$MARKER"; }; then
    echo "slurm-down: no cluster of .ci/slurm-up.sh here ($CONF absent or not its own)"
    exit 0
fi

alive() { # a process that has not exited (an exited one may stay a zombie where PID 1 reaps none)
    local state
    state=$(ps -o stat= -p "$1" 2>/dev/null) && [ "${state:0:1}" != Z ]
}

stop() { # stop NAME PID: SIGTERM, then wait (bounded) for it to exit
    local name=$1 pid=$2
    alive "$pid" || return 0
    kill "$pid"
    for _ in $(seq 100); do alive "$pid" || return 0; sleep 0.1; done
    echo "slurm-down: $name ($pid) still running after 10 s; sending SIGKILL"
    kill -9 "$pid" 2>/dev/null
}

# The jobs first, while slurmd is there to end their steps (KillWait=10 s, then SIGKILL).
if scancel --quiet --partition=ci 2>/dev/null; then
    for _ in $(seq 30); do [ -z "$(squeue -h -p ci -o %i 2>/dev/null)" ] && break; sleep 0.5; done
fi
for daemon in slurmd slurmctld; do
    pid=$(cat "$STATE/$daemon.pid" 2>/dev/null) && stop "$daemon" "$pid"
done
pid=$(cat /run/munge/munged.pid 2>/dev/null) && stop munged "$pid"
echo "slurm-down: stopped"
