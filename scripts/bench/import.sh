#!/usr/bin/env bash
# `import` against Hugging Face `datasets` (issue 11 point 2), side by side in one run: a generated TRL-format JSONL
# file (`prompt`, `chosen`, `rejected` strings, no duplicates) read cold by
#   rmdistill   `rmdistill run` of a one-node manifest (`kind = "import"`) into a fresh store: parse, validate,
#               deduplicate, orient, count words, write the pairs table (Parquet, zstd) and store it by hash
#   datasets    `load_dataset("json", data_files=FILE, split="train")` with a fresh cache directory: what a TRL user
#               runs; it parses with pyarrow's JSON reader and writes its Arrow cache file
# Each side runs as its own process, as a user runs it (interpreter start and `import datasets` count; so do the
# binary's start and the store's hashing of the input), alternating, RUNS rounds. Then the rows are compared: the
# pairs table turned back into (prompt, chosen, rejected) by its label must equal the dataset's rows, in order.
#
#   scripts/bench/import.sh
#
# Environment:
#   CARGO_TARGET_DIR  build directory (default: target); the release binary is built here
#   BENCH_DIR         scratch (default: $CARGO_TARGET_DIR/bench-import; the 1M-record file is ~0.7 GB, each side's
#                     output about as much again)
#   BENCH_VENV        venv that gets `datasets` (default: .venv-bench in the repository)
#   RECORDS           records in the generated file (default 1000000)
#   RUNS              rounds (default 3)
# Prints a table of medians and the ratio; raw timings go to $BENCH_DIR/results.tsv.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
BENCH_DIR=${BENCH_DIR:-$CARGO_TARGET_DIR/bench-import}
BENCH_VENV=${BENCH_VENV:-$REPO/.venv-bench}
RECORDS=${RECORDS:-1000000}
RUNS=${RUNS:-3}
mkdir -p "$BENCH_DIR"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
log() { echo "== $*" >&2; }

if ! "$BENCH_VENV/bin/python" -c "import datasets, pyarrow" 2>/dev/null; then
    log "installing datasets into $BENCH_VENV"
    [ -x "$BENCH_VENV/bin/python" ] || python3 -m venv "$BENCH_VENV"
    "$BENCH_VENV/bin/pip" install -q datasets pyarrow
fi
PY=$BENCH_VENV/bin/python

log "building release"
cargo build --release -p rmdistill --bin rmdistill
BIN=$CARGO_TARGET_DIR/release/rmdistill

DATA=$BENCH_DIR/trl-$RECORDS.jsonl
if [ ! -s "$DATA" ]; then
    log "generating $DATA"
    "$PY" - "$DATA" "$RECORDS" <<'EOF'
import json, random, sys
path, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(20261201)
# a TL;DR-like record: a post of 40-120 words, two summaries of 8-40 words, from a 6,000-word vocabulary
vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(6000)]
words = lambda lo, hi: " ".join(rng.choice(vocab) for _ in range(rng.randint(lo, hi)))
with open(path, "w") as f:
    for i in range(n):
        rec = {"prompt": f"SUBREDDIT: r/{rng.choice(vocab)}\nTITLE: {words(4, 12)}\nPOST: {words(40, 120)}\nTL;DR:",
               "chosen": " " + words(8, 40), "rejected": " " + words(8, 40)}
        f.write(json.dumps(rec) + "\n")
EOF
fi
SIZE=$(stat -c %s "$DATA")

{
    echo "date: $(date -u +%FT%TZ)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "cpu: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1), $(nproc) CPUs"
    echo "datasets: $("$PY" -c 'import datasets; print(datasets.__version__)'), pyarrow $("$PY" -c 'import pyarrow; print(pyarrow.__version__)')"
    echo "file: $RECORDS records, $SIZE bytes"
} | tee "$BENCH_DIR/machine.txt" >&2

W=$BENCH_DIR/work
RES=$BENCH_DIR/results.tsv
: > "$RES"
# one timed process: wall, user and system seconds appended to RES
timed() { local side=$1 round=$2; shift 2
    /usr/bin/time -f '%e %U %S' "$@" > "$W/$side.out" 2> "$W/$side.err" || { cat "$W/$side.err" >&2; exit 1; }
    local t; t=$(tail -1 "$W/$side.err")
    printf '%s\t%s\t%s\t%s\n' "$side" "$round" "$t" "$(cut -d' ' -f1 /proc/loadavg)" | tr ' ' '\t' >> "$RES"
    echo "$side round $round: wall/user/sys $t" >&2
}

for round in $(seq 1 "$RUNS"); do
    rm -rf "$W"; mkdir -p "$W/rm"
    cat > "$W/rm/m.toml" <<EOF
[stages.pairs]
kind = "import"
params = { path = "$DATA", format = "trl" }
EOF
    sync
    timed rmdistill "$round" "$BIN" run "$W/rm/m.toml" --store "file://$W/rm/store" --json -q
    cp "$W/rmdistill.out" "$W/rm/run.json"
    sync
    timed datasets "$round" "$PY" -c "
import sys, time
t = time.perf_counter()
from datasets import load_dataset
ds = load_dataset('json', data_files=sys.argv[1], split='train', cache_dir=sys.argv[2])
print(len(ds), time.perf_counter() - t)
" "$DATA" "$W/hf-cache"
done

log "comparing rows"
"$PY" - "$W/rm/run.json" "$W/rm/store" "$DATA" "$W/hf-cache" <<'EOF'
import json, sys, pyarrow.parquet as pq
from datasets import load_dataset
run, store, data, cache = sys.argv[1:]
h = [n for n in json.load(open(run))["nodes"] if n["node"] == "pairs"][0]["outputs"]["pairs"]["hash"]
t = pq.read_table(f"{store}/blobs/{h[:2]}/{h}", columns=["prompt", "response_a", "response_b", "label"]).to_pydict()
ds = load_dataset("json", data_files=data, split="train", cache_dir=cache)
assert len(ds) == len(t["prompt"]), (len(ds), len(t["prompt"]))
chosen = [a if l == 0 else b for a, b, l in zip(t["response_a"], t["response_b"], t["label"])]
rejected = [b if l == 0 else a for a, b, l in zip(t["response_a"], t["response_b"], t["label"])]
col = ds.to_dict()
bad = sum(x != y for x, y in zip(col["prompt"], t["prompt"]))
bad += sum(x != y for x, y in zip(col["chosen"], chosen)) + sum(x != y for x, y in zip(col["rejected"], rejected))
print(f"rows: {len(ds)} on both sides; differing fields: {bad}")
sys.exit(1 if bad else 0)
EOF

python3 - "$RES" <<'EOF'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
med = lambda side, k: statistics.median(float(r[k]) for r in rows if r[0] == side)
print("| side | wall (median) | user + sys (median) |\n| --- | --- | --- |")
for s in ("rmdistill", "datasets"):
    print(f"| {s} | {med(s, 2):.2f} s | {med(s, 3) + med(s, 4):.2f} s |")
print(f"ratio datasets / rmdistill: wall {med('datasets', 2) / med('rmdistill', 2):.2f}×, "
      f"CPU {(med('datasets', 3) + med('datasets', 4)) / (med('rmdistill', 3) + med('rmdistill', 4)):.2f}×")
EOF
