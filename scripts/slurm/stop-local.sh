#!/usr/bin/env bash
# Stops the cluster that scripts/slurm/start-local.sh DIR started: cancels its jobs, then stops slurmd, slurmctld and
# munged by the process ids they recorded under DIR/run. Leaves DIR (config, state, logs) in place.
set -uo pipefail

dir=${1:-}
if [[ -z $dir || ! -d $dir ]]; then
    echo "usage: $0 DIR   (the directory given to start-local.sh)" >&2
    exit 2
fi
if [[ -f $dir/slurm.conf ]]; then
    SLURM_CONF=$dir/slurm.conf scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
fi
stop() {
    local pidfile=$dir/run/$1.pid pid
    [[ -f $pidfile ]] || return 0
    pid=$(cat "$pidfile")
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}
stop slurmd
stop slurmctld
stop munged
exit 0
