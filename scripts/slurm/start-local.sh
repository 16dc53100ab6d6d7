#!/usr/bin/env bash
# Starts a one-node Slurm cluster on this machine (loopback) for tests and trials: munged, slurmctld and slurmd, each
# with its own socket, ports, state and logs under one directory, so nothing in /etc or /var is used or changed.
#
#   scripts/slurm/start-local.sh [DIR]   # as root; installs slurm-wlm and munge with apt-get when missing;
#                                        # DIR defaults to a new temporary directory
#   export SLURM_CONF=DIR/slurm.conf     # then sbatch, squeue, sinfo, scancel talk to this cluster
#   scripts/slurm/stop-local.sh DIR      # stops what this script started
#
# Prints `SLURM_CONF=DIR/slurm.conf` on its last line of stdout once `sinfo` shows the node idle.
# Exit codes: 0 up; 2 usage; 3 not root or no apt-get where slurm-wlm is missing (the caller may skip); 1 any other failure.
#
# Safe to call several times at once (tests do): the package installation runs under the lock every rmdistill
# installer takes (scripts/lib/install-lock.sh) and waits for dpkg's own lock, and the start-up (choosing free ports
# through the node being idle) runs under a lock of its own, so two clusters never pick the same ports.
set -euo pipefail

if [[ $# -gt 1 || ${1:-} == -* ]]; then
    echo "usage: $0 [DIR]   (a directory for the cluster's config, state and logs)" >&2
    exit 2
fi
dir=${1:-$(mktemp -d -t rmdistill-slurm-XXXXXX)}
if [[ $(id -u) != 0 ]]; then
    echo "start-local.sh: must run as root (it installs packages and runs slurmd, which launches jobs)" >&2
    exit 3
fi

PATH=$PATH:/usr/sbin:/sbin
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../lib/install-lock.sh
source "$here/../lib/install-lock.sh"
if ! slurm_installed; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "start-local.sh: slurm-wlm/munge are not installed and apt-get is not available" >&2
        exit 3
    fi
    apt_install slurm-wlm munge
fi

# One start-up at a time (free ports are chosen below and taken only once the daemons listen).
exec 8>"$(lock_dir)/rmdistill-slurm-start.lock"
flock 8

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
for d in munged slurmctld slurmd; do
    if [[ -f $dir/run/$d.pid ]] && kill -0 "$(cat "$dir/run/$d.pid")" 2>/dev/null; then
        echo "start-local.sh: $d from $dir is still running; stop it first: $(dirname "$0")/stop-local.sh $dir" >&2
        exit 1
    fi
done
chmod 0755 "$dir"
mkdir -p "$dir/munge" "$dir/state" "$dir/spool" "$dir/log" "$dir/run"
chmod 0700 "$dir/munge"

# munge: our own key and socket, so a system munged (if any) is left alone.
if [[ ! -s $dir/munge/munge.key ]]; then
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chmod 0400 "$dir/munge/munge.key"
fi
sock=$dir/munge/munge.socket
# Daemons must not inherit the start-up lock (fd 8), or it would stay held as long as they run.
munged --force --key-file="$dir/munge/munge.key" --socket="$sock" --pid-file="$dir/run/munged.pid" \
    --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed" --num-threads=2 8>&-
for _ in $(seq 50); do [[ -S $sock ]] && break; sleep 0.1; done
if ! munge -S "$sock" -n </dev/null | unmunge -S "$sock" >/dev/null; then
    echo "start-local.sh: munged does not answer on $sock (see $dir/log/munged.log)" >&2
    exit 1
fi

# Two free TCP ports for slurmctld and slurmd.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ports=()
for p in $(seq $((17000 + RANDOM % 2000)) 19999); do
    if port_free "$p"; then ports+=("$p"); fi
    (( ${#ports[@]} == 2 )) && break
done

host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo)
cat >"$dir/slurm.conf" <<CONF
# Written by scripts/slurm/start-local.sh: one node on loopback, no accounting database.
ClusterName=rmdlocal
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=${ports[0]}
SlurmdPort=${ports[1]}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$sock
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SchedulerParameters=sched_min_interval=0
ReturnToService=2
MpiDefault=none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MinJobAge=600
MaxArraySize=1001
KillWait=5
InactiveLimit=0
SlurmdTimeout=60
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$dir/slurm.conf

slurmctld -f "$SLURM_CONF" -i 8>&-
slurmd -f "$SLURM_CONF" 8>&-

ok=0
for _ in $(seq 150); do
    state=$(sinfo -h -n "$host" -o '%t' 2>/dev/null || true)
    if [[ $state == idle ]]; then ok=1; break; fi
    sleep 0.2
done
if (( ! ok )); then
    echo "start-local.sh: node $host is not idle after 30s (state: ${state:-none}); logs in $dir/log" >&2
    tail -n 20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
    exit 1
fi
echo "SLURM_CONF=$SLURM_CONF"
