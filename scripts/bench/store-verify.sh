#!/usr/bin/env bash
# What verifying every cache hit costs a no-op run, and what the remembered-hash fast path saves (src/store.rs).
#
#   scripts/bench/store-verify.sh [MANIFEST]
#
# MANIFEST defaults to a generated 765-node manifest (one `import` of ../shared/data/tldr-2k/train.jsonl and 764
# `subsample` nodes, the default experiment's node count); give manifests/synthetic-default.toml with
# STORE=<a store where it already ran> to measure the real one. The store is built first when STORE is not given.
# Then, side by side in one run, each REPS times (default 10) in turn:
#   - this build's `run` (a no-op) with the verified-hash state warm (the usual case);
#   - the same with that state removed before each run (every blob hashed again: what verification costs without
#     the fast path);
#   - BEFORE_BIN's `run` (e.g. main's build from before verification), when BEFORE_BIN is given and reads the
#     same keys (its stages' code identity must match this build's).
# Prints the wall time (median, min) of each, the runner's own time ("nothing to do … (X s)", which leaves out
# process start-up), and the store's size, with `lscpu`'s model name and the load average before and after.
#
# Environment: BIN (default target/debug/rmdistill), BEFORE_BIN, STORE (a file:// URL), REPS, BENCH_DIR (default
# target/bench-work/store-verify).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${BIN:-$REPO/target/debug/rmdistill}
REPS=${REPS:-10}
BENCH_DIR=${BENCH_DIR:-$REPO/target/bench-work/store-verify}
mkdir -p "$BENCH_DIR"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)

if [[ $# -ge 1 ]]; then
    MANIFEST=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
else
    MANIFEST=$BENCH_DIR/m765.toml
    cp "$REPO/../shared/data/tldr-2k/train.jsonl" "$BENCH_DIR/train.jsonl"
    cat >"$MANIFEST" <<EOF
[stages.import]
kind = "import"
params = { path = "train.jsonl" }

[stages.sub]
kind = "subsample"
inputs = { pairs = "import.pairs" }
sweep = { rho = [0.3, 0.4, 0.5, 0.6], seed = [$(seq -s ', ' 0 190)] }
params = { rho = "\${rho}", size = 40, seed = "\${seed}", length = "words" }
EOF
fi
LOCAL=$BENCH_DIR/local
export RMDISTILL_LOCAL_DIR=$LOCAL
if [[ -z ${STORE:-} ]]; then
    STORE=file://$BENCH_DIR/store
    echo "== building the store ($MANIFEST)" >&2
    "$BIN" run "$MANIFEST" --store "$STORE" -q >&2
fi
nodes=$("$BIN" node list "$MANIFEST" | wc -l)
"$BIN" run "$MANIFEST" --store "$STORE" -q | grep -q "nothing to do" || { echo "the store does not hold every node" >&2; exit 1; }
sleep 3 # let the newest blobs settle, so that the warm state can remember them
"$BIN" status "$MANIFEST" --store "$STORE" >/dev/null

load() { echo "load average $1: $(cut -d' ' -f1-3 /proc/loadavg)"; }
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -n1); $(nproc) cores"
load before
declare -A wall inner
run_one() { # label, command...
    local t0 t1 out
    t0=$(date +%s.%N)
    out=$("$@" 2>/dev/null)
    t1=$(date +%s.%N)
    wall[$label]+="$(echo "$t1 - $t0" | bc) "
    inner[$label]+="$(sed -n 's/.*cached (\([0-9.]*\)s).*/\1/p' <<<"$out") "
}
for ((i = 0; i < REPS; i++)); do
    label=warm run_one "$BIN" run "$MANIFEST" --store "$STORE"
    rm -rf "$LOCAL/verified"
    label=cold run_one "$BIN" run "$MANIFEST" --store "$STORE"
    if [[ -n ${BEFORE_BIN:-} ]]; then
        label=before run_one "$BEFORE_BIN" run "$MANIFEST" --store "$STORE"
    fi
done
load after
stats() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{a[NR]=$1} END {printf "median %.3f s, min %.3f s", a[int((NR+1)/2)], a[1]}'; }
store_dir=${STORE#file://}
echo "store: $nodes nodes, $(find "$store_dir/blobs" -type f | wc -l) blobs, $(du -sh "$store_dir/blobs" | cut -f1)"
for l in warm cold before; do
    [[ -n ${wall[$l]:-} ]] || continue
    echo "$l: wall $(stats "${wall[$l]}"); runner $(stats "${inner[$l]}")"
done
