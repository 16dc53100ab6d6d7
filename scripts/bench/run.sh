#!/usr/bin/env bash
# Reproduces the issue-2 performance measurements from a fresh clone (see BENCHMARKS.md):
#   1. no-op re-run of a 200-node manifest (rmdistill vs DVC, hyperfine)
#   2. hashing throughput of a 1 GiB artifact (benches/hashing.rs)
#   3. subsample over 10M generated pairs (stages/examples/bench_subsample.rs, and end to end through the binary)
#
#   scripts/bench/run.sh [noop] [hash] [subsample]      (default: all three)
#
# Environment:
#   CARGO_TARGET_DIR  build directory (default: target)
#   BENCH_DIR         scratch directory for manifests, stores, the DVC repo and large files
#                     (default: $CARGO_TARGET_DIR/bench-work; needs ~3 GB free)
#   BENCH_VENV        Python venv that gets DVC (default: .venv-bench in the repository; add it to .git/info/exclude)
#   NOOP_NODES        nodes in the no-op manifest (default 200: one generate + 199 subsample)
#   NOOP_RUNS         hyperfine runs for the no-op comparison (default 10; warmup is 2)
#   NOOP_FRESH=1      rebuild the DVC repository even when one with the same dvc.yaml exists
#   HASH_MIB          size of the hashed file in MiB (default 1024)
#   SUB_PAIRS         generated pairs for the subsample benchmark (default 10000000)
#   SUB_RUNS          hyperfine runs for the end-to-end subsample node (default 5; warmup 1)
# Installs hyperfine (apt) and DVC (pip, into BENCH_VENV) when missing. Prints a table at the end; raw outputs
# (hyperfine JSON, logs, load averages) are kept in $BENCH_DIR/results.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
BENCH_DIR=${BENCH_DIR:-$CARGO_TARGET_DIR/bench-work}
BENCH_VENV=${BENCH_VENV:-$REPO/.venv-bench}
NOOP_NODES=${NOOP_NODES:-200}
NOOP_RUNS=${NOOP_RUNS:-10}
HASH_MIB=${HASH_MIB:-1024}
SUB_PAIRS=${SUB_PAIRS:-10000000}
SUB_RUNS=${SUB_RUNS:-5}
RES=$BENCH_DIR/results
mkdir -p "$BENCH_DIR" "$RES"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
RES=$BENCH_DIR/results

WHAT=("$@")
[ ${#WHAT[@]} -eq 0 ] && WHAT=(noop hash subsample)
want() { local w; for w in "${WHAT[@]}"; do [ "$w" = "$1" ] && return 0; done; return 1; }

log() { echo "== $*" >&2; }
load() { echo "$(date -u +%FT%TZ) $1: $(uptime | sed 's/.*load average/load average/')" | tee -a "$RES/load.txt" >&2; }

# ---------------------------------------------------------------------------------------------- tools
need_root() { [ "$(id -u)" = 0 ] && echo "" || echo sudo; }
if ! command -v hyperfine >/dev/null; then
    log "installing hyperfine"
    $(need_root) apt-get update -qq && $(need_root) apt-get install -y -qq hyperfine >/dev/null
fi
if want noop && ! "$BENCH_VENV/bin/dvc" --version >/dev/null 2>&1; then
    log "installing DVC into $BENCH_VENV"
    python3 -m venv "$BENCH_VENV"
    "$BENCH_VENV/bin/pip" install -q dvc
fi
export DVC_NO_ANALYTICS=1

log "building release"
# One build for the binary and the stages' examples: building the example on its own (-p rmdistill-stages) unifies
# features differently and recompiles most dependencies.
cargo build --release -p rmdistill -p rmdistill-stages --bins --examples
BIN=$CARGO_TARGET_DIR/release/rmdistill

{
    echo "date: $(date -u +%FT%TZ)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "nproc: $(nproc)"
    echo "cpu: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)"
    echo "memory: $(free -h | awk '/^Mem:/ {print $2}')"
    echo "kernel: $(uname -r)"
    echo "hyperfine: $(hyperfine --version)"
    [ -x "$BENCH_VENV/bin/dvc" ] && echo "dvc: $("$BENCH_VENV/bin/dvc" --version)"
    echo "rustc: $(rustc --version)"
} > "$RES/machine.txt"
cat "$RES/machine.txt" >&2

TABLE=$RES/table.tsv
: > "$TABLE"
row() { printf '%s\t%s\t%s\t%s\n' "$@" >> "$TABLE"; }

# mean and σ (seconds) of one command in a hyperfine JSON export
hf() { python3 - "$1" "$2" <<'EOF'
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    if r["command"] == sys.argv[2]:
        print(f'{r["mean"]:.6f} {r["stddev"] or 0:.6f}')
EOF
}

# ---------------------------------------------------------------------------------------------- 1. no-op re-run
if want noop; then
    log "1. no-op re-run of a $NOOP_NODES-node manifest"
    W=$BENCH_DIR/noop
    rm -rf "$W"
    mkdir -p "$W/rm"
    SUBS=$((NOOP_NODES - 1))
    seeds=$(seq -s ', ' 0 $((SUBS - 1)))
    cat > "$W/rm/m.toml" <<EOF
description = "no-op benchmark: one generate node, $SUBS subsample nodes reading its output"

[vars]
seeds = [$seeds]

[stages.gen]
kind = "generate"
params = { n = 2000, seed = 7 }

[stages.sub]
kind = "subsample"
inputs = { pairs = "gen.pairs" }
sweep = { seed = "\${seeds}" }
params = { rho = 0.5, size = 100, seed = "\${seed}" }
EOF
    (cd "$W/rm" && "$BIN" run m.toml -q > "$RES/noop-first-run.txt")
    (cd "$W/rm" && "$BIN" run m.toml -q) | tee "$RES/noop-check.txt" >&2
    grep -q "nothing to do: all $NOOP_NODES nodes cached" "$RES/noop-check.txt" || { echo "expected a no-op re-run of $NOOP_NODES nodes" >&2; exit 1; }

    # The DVC equivalent: one root stage, SUBS stages depending on its output, each writing its own small file.
    # Its first `dvc repro` takes minutes (a process per stage), so an existing repository with the same dvc.yaml
    # is kept (NOOP_FRESH=1 rebuilds it).
    D=$BENCH_DIR/noop-dvc
    {
        echo "stages:"
        echo "  root:"
        echo "    cmd: seq 1 2000 > root.txt"
        echo "    outs: [root.txt]"
        for i in $(seq 0 $((SUBS - 1))); do
            echo "  s$i:"
            echo "    cmd: head -c 100 root.txt > s$i.txt && echo $i >> s$i.txt"
            echo "    deps: [root.txt]"
            echo "    outs: [s$i.txt]"
        done
    } > "$W/dvc.yaml"
    if [ "${NOOP_FRESH:-0}" = 1 ] || ! cmp -s "$W/dvc.yaml" "$D/dvc.yaml"; then
        rm -rf "$D"
        mkdir -p "$D"
        (
            cd "$D"
            git init -q . && "$BENCH_VENV/bin/dvc" init -q && "$BENCH_VENV/bin/dvc" config core.analytics false
            cp "$W/dvc.yaml" dvc.yaml
            log "first dvc repro ($NOOP_NODES stages)"
            "$BENCH_VENV/bin/dvc" repro -q > "$RES/dvc-first-run.txt" 2>&1
        )
    fi
    (cd "$D" && "$BENCH_VENV/bin/dvc" repro 2>&1 | tail -3 | tee "$RES/dvc-check.txt" >&2)
    grep -qi "up to date" "$RES/dvc-check.txt" || { echo "expected DVC's repro to be a no-op" >&2; exit 1; }

    load "before no-op hyperfine"
    hyperfine --warmup 2 --runs "$NOOP_RUNS" --export-json "$RES/noop.json" --export-markdown "$RES/noop.md" \
        -n rmdistill "cd '$W/rm' && '$BIN' run m.toml -q" \
        -n dvc "cd '$D' && '$BENCH_VENV/bin/dvc' repro -q" | tee "$RES/noop.txt" >&2
    load "after no-op hyperfine"
    read -r rm_m rm_s < <(hf "$RES/noop.json" rmdistill)
    read -r dvc_m dvc_s < <(hf "$RES/noop.json" dvc)
    met=$(python3 -c "print('yes' if $rm_m <= 0.25 else 'NO')")
    row "no-op re-run, $NOOP_NODES nodes: rmdistill" "$(python3 -c "print(f'{$rm_m:.3f} ± {$rm_s:.3f} s')")" "≤ 0.25 s" "$met"
    row "no-op re-run, $NOOP_NODES stages: dvc repro" "$(python3 -c "print(f'{$dvc_m:.3f} ± {$dvc_s:.3f} s')")" "" ""
    row "  dvc / rmdistill" "$(python3 -c "print(f'{$dvc_m / $rm_m:.1f}x')")" "" ""
fi

# ---------------------------------------------------------------------------------------------- 2. hashing
if want hash; then
    log "2. hashing throughput ($HASH_MIB MiB)"
    cargo bench -p rmdistill --bench hashing --no-run
    load "before hashing"
    BENCH_TMPDIR=$BENCH_DIR cargo bench -q -p rmdistill --bench hashing -- "$HASH_MIB" 7 | tee "$RES/hashing.txt" >&2
    load "after hashing"
    while read -r line; do
        label=$(echo "$line" | sed 's/ *threads=.*//')
        t=$(echo "$line" | sed -n 's/.*threads=\([0-9]*\).*/\1/p')
        best=$(echo "$line" | sed -n 's/.*best *\([0-9.]*\) GB\/s.*/\1/p')
        med=$(echo "$line" | sed -n 's/.*median *\([0-9.]*\) GB\/s  per.*/\1/p')
        per=$(echo "$line" | sed -n 's/.*per core (median) *\([0-9.]*\) GB\/s.*/\1/p')
        met=$(python3 -c "print('yes' if $per >= 1.0 else 'NO')")
        row "hash $HASH_MIB MiB: $label, $t thread(s)" "best $best, median $med GB/s ($per GB/s/core)" "≥ 1 GB/s/core" "$met"
    done < <(grep "threads=" "$RES/hashing.txt")
fi

# ---------------------------------------------------------------------------------------------- 3. subsample
if want subsample; then
    log "3. subsample over $SUB_PAIRS generated pairs"
    load "before bench_subsample example"
    mkdir -p "$BENCH_DIR/sub-example"
    "$CARGO_TARGET_DIR/release/examples/bench_subsample" "$SUB_PAIRS" "$BENCH_DIR/sub-example" | tee "$RES/bench_subsample.txt" >&2
    load "after bench_subsample example"
    while read -r line; do
        params=$(echo "$line" | sed -n 's/.*end to end \({.*}\): .*/\1/p')
        secs=$(echo "$line" | sed -n 's/.*}: \([0-9.]*\) s.*/\1/p')
        met=$(python3 -c "print('yes' if $secs <= 3 else 'NO')")
        row "subsample stage (example), $SUB_PAIRS pairs, $params" "$secs s" "≤ 3 s" "$met"
    done < <(grep "subsample run end to end" "$RES/bench_subsample.txt")
    rm -rf "$BENCH_DIR/sub-example"

    # End to end through the binary: generate once, then time only the subsample nodes (forced).
    W=$BENCH_DIR/sub-e2e
    rm -rf "$W"
    mkdir -p "$W"
    cat > "$W/m.toml" <<EOF
description = "subsample benchmark: $SUB_PAIRS generated pairs"

[stages.gen]
kind = "generate"
params = { n = $SUB_PAIRS, seed = 1, prompt_words = [3, 8], response_words = [1, 12], longer_preferred = 0.6 }

[stages.small]
kind = "subsample"
inputs = { pairs = "gen.pairs" }
params = { rho = 0.5, size = 30000, seed = 1 }

[stages.max]
kind = "subsample"
inputs = { pairs = "gen.pairs" }
params = { rho = 0.2, size = "max", seed = 1 }
EOF
    load "before generate ($SUB_PAIRS pairs, through the binary)"
    t0=$(date +%s.%N)
    (cd "$W" && "$BIN" run m.toml -q --json > "$RES/sub-e2e-first-run.json")
    t1=$(date +%s.%N)
    python3 - "$RES/sub-e2e-first-run.json" <<'EOF' >&2
import json, sys
for n in json.load(open(sys.argv[1]))["nodes"]:
    print(f'first run: {n["node"]}: {n["outcome"]} in {n["seconds"]:.2f} s')
EOF
    echo "first run (generate + both subsample nodes): $(python3 -c "print(f'{$t1 - $t0:.1f}')") s wall" | tee "$RES/sub-e2e-first-run.txt" >&2
    (cd "$W" && "$BIN" node list m.toml) > "$RES/sub-e2e-nodes.txt"
    ls -l "$W/.rmdistill/store/blobs"/*/* 2>/dev/null | sort -k5 -n | tail -1 | awk '{print "largest blob (the pairs table): " $5 " bytes"}' | tee -a "$RES/sub-e2e-first-run.txt" >&2
    load "before subsample hyperfine"
    hyperfine --warmup 1 --runs "$SUB_RUNS" --export-json "$RES/sub-e2e.json" --export-markdown "$RES/sub-e2e.md" \
        -n small "cd '$W' && '$BIN' run m.toml -q --force small small" \
        -n max "cd '$W' && '$BIN' run m.toml -q --force max max" | tee "$RES/sub-e2e.txt" >&2
    load "after subsample hyperfine"
    for name in small max; do
        read -r m s < <(hf "$RES/sub-e2e.json" "$name")
        met=$(python3 -c "print('yes' if $m <= 3 else 'NO')")
        p=$(grep -A3 "stages.$name\]" "$W/m.toml" | sed -n 's/^params = //p')
        row "subsample node via binary (--force), $SUB_PAIRS pairs, $p" "$(python3 -c "print(f'{$m:.3f} ± {$s:.3f} s')")" "≤ 3 s" "$met"
    done
fi

# ---------------------------------------------------------------------------------------------- table
echo
cat "$RES/machine.txt"
echo
printf '| %s | %s | %s | %s |\n' "measurement" "result" "target" "met"
printf '| --- | --- | --- | --- |\n'
while IFS=$'\t' read -r a b c d; do printf '| %s | %s | %s | %s |\n' "$a" "$b" "$c" "$d"; done < "$TABLE"
echo
echo "load averages during the runs: $RES/load.txt"
cat "$RES/load.txt"
