#!/usr/bin/env bash
# Start-up cost of the two binaries: `rmdistill --version` (the engine, which must not load libtorch) and
# `rmdistill-worker --version` (a worker: process start + libtorch's static initialisers, paid once per torch node).
# Usage: scripts/bench/startup.sh [TARGET_DIR] [RUNS]   (default: target/debug, 20 runs after 3 warm-ups)
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${1:-target/debug}
runs=${2:-20}
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p') × $(nproc); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for cmd in "$dir/rmdistill --version" "$dir/rmdistill-worker --version"; do
  for _ in 1 2 3; do $cmd >/dev/null; done
  times=()
  for _ in $(seq "$runs"); do
    t0=$(date +%s%N); $cmd >/dev/null; t1=$(date +%s%N)
    times+=($(( (t1 - t0) / 1000 )))
  done
  sorted=($(printf '%s\n' "${times[@]}" | sort -n))
  n=${#sorted[@]}
  printf '%-40s median %8.1f ms  min %8.1f  max %8.1f  (n=%d)\n' "$cmd" \
    "$(echo "${sorted[$((n / 2))]} / 1000" | bc -l)" "$(echo "${sorted[0]} / 1000" | bc -l)" \
    "$(echo "${sorted[$((n - 1))]} / 1000" | bc -l)" "$n"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
