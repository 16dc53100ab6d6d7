#!/usr/bin/env bash
# `import` against the same work written with polars (issue 11 point 2), side by side in one run, release builds:
#   rmdistill   `rmdistill run` of a one-node `import` manifest into a fresh store (as scripts/bench/import.sh runs it)
#   polars      scripts/bench/polars-import: a lazy polars 0.55.2 read of the JSONL file, duplicates dropped, word
#               counts, Parquet written with zstd level 1 — less than `import` does (its header says what it leaves
#               out), so a lower bound for an `import` built on polars
# on the generated 1M-record TRL file of scripts/bench/import.sh (run that first: it writes the file), alternating,
# RUNS rounds; each side one process, its wall, user and system seconds and peak RSS printed.
#
#   scripts/bench/polars-import.sh
#
# Environment: CARGO_TARGET_DIR (default target), PL_TARGET (where polars builds; default
# $CARGO_TARGET_DIR/bench-polars), RECORDS (default 1000000), RUNS (default 3).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
RECORDS=${RECORDS:-1000000}
RUNS=${RUNS:-3}
DATA=$CARGO_TARGET_DIR/bench-import/trl-$RECORDS.jsonl
[ -s "$DATA" ] || { echo "no $DATA: run scripts/bench/import.sh first (it generates the file)" >&2; exit 2; }
W=$CARGO_TARGET_DIR/bench-polars-work
echo "== building release: rmdistill, then the polars side" >&2
cargo build --release -p rmdistill --bin rmdistill
BIN=$CARGO_TARGET_DIR/release/rmdistill
PL_TARGET=${PL_TARGET:-$CARGO_TARGET_DIR/bench-polars}
( cd scripts/bench/polars-import && CARGO_TARGET_DIR=$PL_TARGET cargo build --release )
PL=$PL_TARGET/release/polars-import-bench
echo "date: $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD), cpu: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1), $(nproc) CPUs, file: $RECORDS records, $(stat -c %s "$DATA") bytes" >&2
for round in $(seq 1 "$RUNS"); do
    rm -rf "$W"; mkdir -p "$W"
    printf '[stages.pairs]\nkind = "import"\nparams = { path = "%s", format = "trl" }\n' "$DATA" > "$W/m.toml"
    sync
    /usr/bin/time -f "round $round rmdistill: %e s wall, %U s user, %S s sys, %M KB peak" \
        "$BIN" run "$W/m.toml" --store "file://$W/store" --json -q > /dev/null
    sync
    /usr/bin/time -f "round $round polars: %e s wall, %U s user, %S s sys, %M KB peak" "$PL" "$DATA" "$W/polars.parquet"
done
rm -rf "$W"
