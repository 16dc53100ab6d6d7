#!/usr/bin/env bash
# Issue 10's start-up figures side by side in one run: `rmdistill --version`, the no-op re-run of the default
# manifest (every node cached) and DVC's no-op `dvc repro` of a DVC pipeline with the same DAG (one stage per node,
# each depending on the outputs of the node's upstream nodes, each writing one small file).
#
# Usage: scripts/bench/noop-default.sh [MANIFEST]        (default manifests/synthetic-default.toml)
# Needs the manifest's store complete (run ./scripts/main.sh first; the script checks and says so).
# Environment:
#   BIN         the engine binary (default target/debug/rmdistill, what the README builds)
#   RUNS        hyperfine runs for rmdistill (default 20; warm-up 3); DVC_RUNS for dvc (default 3; warm-up 1)
#   BENCH_DIR   scratch directory for the DVC repository (default target/bench-work/noop-default-dvc; kept between
#               runs because its first commit hashes every stage)
#   BENCH_VENV  Python venv that gets DVC (default .venv-bench)
# Installs hyperfine (apt) and DVC (pip) when missing. Prints a markdown table and writes it with the raw hyperfine
# JSON to $BENCH_DIR/results.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
MANIFEST=${1:-manifests/synthetic-default.toml}
BIN=${BIN:-$REPO/target/debug/rmdistill}
RUNS=${RUNS:-20}
DVC_RUNS=${DVC_RUNS:-3}
BENCH_DIR=${BENCH_DIR:-$REPO/target/bench-work/noop-default-dvc}
BENCH_VENV=${BENCH_VENV:-$REPO/.venv-bench}
RES=$BENCH_DIR/results
mkdir -p "$RES"
export DVC_NO_ANALYTICS=1

if ! command -v hyperfine >/dev/null; then
    apt-get update -qq && apt-get install -y -qq hyperfine >/dev/null
fi
if ! "$BENCH_VENV/bin/dvc" --version >/dev/null 2>&1; then
    python3 -m venv "$BENCH_VENV" && "$BENCH_VENV/bin/pip" install -q dvc
fi
[ -x "$BIN" ] || { echo "no engine binary at $BIN (cargo build --bins first, or set BIN)" >&2; exit 1; }

check=$("$BIN" run "$MANIFEST" -q 2>&1 | tail -1)
case $check in
    "nothing to do: all "*) ;;
    *) echo "the store of $MANIFEST is not complete ($check); run ./scripts/main.sh first" >&2; exit 1 ;;
esac
nodes=$(echo "$check" | sed -n 's/nothing to do: all \([0-9]*\) nodes.*/\1/p')

# The DVC pipeline of the same DAG. Stage names are n0…n(N-1) in the manifest's node order (DVC names allow no `@`,
# `=` or `,`); outputs are o/nI.txt. The outputs are written here and recorded with `dvc commit` rather than produced
# by a first `dvc repro` (which would start a shell per stage for minutes); the no-op measured afterwards is the same.
"$BIN" node list "$MANIFEST" --json > "$RES/nodes.json"
python3 - "$RES/nodes.json" "$BENCH_DIR/dvc.yaml.new" <<'EOF'
import json, sys
nodes = json.load(open(sys.argv[1]))
idx = {n["node"]: i for i, n in enumerate(nodes)}
with open(sys.argv[2], "w") as f:
    f.write("stages:\n")
    for i, n in enumerate(nodes):
        f.write(f"  n{i}:\n    cmd: echo {i} > o/n{i}.txt\n")
        deps = sorted({idx[d] for d in n["deps"]})
        if deps:
            f.write("    deps: [" + ", ".join(f"o/n{d}.txt" for d in deps) + "]\n")
        f.write(f"    outs: [o/n{i}.txt]\n")
EOF
D=$BENCH_DIR/repo
if ! cmp -s "$BENCH_DIR/dvc.yaml.new" "$D/dvc.yaml" || ! (cd "$D" && "$BENCH_VENV/bin/dvc" status -q); then
    echo "building the DVC repository ($nodes stages; dvc commit hashes each once)" >&2
    rm -rf "$D" && mkdir -p "$D/o"
    (
        cd "$D"
        git init -q . && "$BENCH_VENV/bin/dvc" init -q && "$BENCH_VENV/bin/dvc" config core.analytics false
        cp "$BENCH_DIR/dvc.yaml.new" dvc.yaml
        for i in $(seq 0 $((nodes - 1))); do echo "$i" > "o/n$i.txt"; done
        "$BENCH_VENV/bin/dvc" commit -f -q
        "$BENCH_VENV/bin/dvc" status -q || { echo "DVC still sees changes after the commit" >&2; exit 1; }
    )
fi
dvc_check=$(cd "$D" && "$BENCH_VENV/bin/dvc" repro 2>&1 | tail -2)
echo "$dvc_check" | grep -qi "up to date" || { echo "expected DVC's repro to be a no-op: $dvc_check" >&2; exit 1; }

{
    echo "date: $(date -u +%FT%TZ)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "cpu: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1) × $(nproc)"
    echo "binary: $BIN"
    echo "dvc: $("$BENCH_VENV/bin/dvc" --version)"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$RES/machine.txt" >&2
hyperfine -N --warmup 3 --runs "$RUNS" --export-json "$RES/rmdistill.json" \
    -n "rmdistill --version" "$BIN --version" \
    -n "rmdistill run (no-op, $nodes nodes)" "$BIN run $MANIFEST -q" >&2
(cd "$D" && hyperfine -N --warmup 1 --runs "$DVC_RUNS" --export-json "$RES/dvc.json" \
    -n "dvc repro (no-op, $nodes stages)" "$BENCH_VENV/bin/dvc repro -q") >&2
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$RES/machine.txt" >&2

python3 - "$RES/rmdistill.json" "$RES/dvc.json" <<'EOF' | tee "$RES/table.md"
import json, sys
rows = [r for f in sys.argv[1:] for r in json.load(open(f))["results"]]
print("| command | median | mean ± σ | min–max | runs |")
print("| --- | --- | --- | --- | --- |")
for r in rows:
    ms = lambda s: f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"
    print(f"| `{r['command']}` | **{ms(r['median'])}** | {ms(r['mean'])} ± {ms(r['stddev'] or 0)} | "
          f"{ms(r['min'])}–{ms(r['max'])} | {len(r['times'])} |")
noop = next(r for r in rows if r["command"].startswith("rmdistill run"))
dvc = next(r for r in rows if r["command"].startswith("dvc"))
print(f"\nDVC / rmdistill (medians): **{dvc['median'] / noop['median']:.0f}×**")
EOF
