#!/usr/bin/env bash
# Issue 9 point 2's reward-model figures as a recorded run: the single reward model of the default pipeline
# (`rm@rho=R,seed=S`) trained on D_0.2, D_0.5 and D_0.8 for each seed, scored against the oracle on the held-out pairs
# of the eval prompts that the oracle decides (`train_rm`'s metrics), printed beside the issue's targets:
#   - the model trained on D_0.5: accuracy ≥ 0.75 overall and ≥ 0.65 on pairs whose lengths differ by less than the
#     margin;
#   - the length sensitivity (share of length-differing pairs where the longer response gets the higher reward) of the
#     models trained on D_0.2 and on D_0.8 differs by ≥ 0.2.
#
# Usage: scripts/bench/rm-oracle.sh [MANIFEST] [-S NAME=VALUE ...]      (default manifests/synthetic-default.toml)
# Environment:
#   BIN    the engine binary (default target/debug/rmdistill, what the README builds)
#   STORE  store URL (default: the manifest's own, so after ./scripts/main.sh nothing is trained again)
#   SEEDS  TOML list of seeds (default [0, 1, 2])
# Trains what the store lacks (synth → SFT → pairs → labels → D_ρ → reward models; about a minute for 3 seeds on 2 cores),
# then reads each model's metrics with `rmdistill show --json`. Prints a markdown table; exits 0 whether or not the
# targets are met (the table says which are).
set -euo pipefail
cd "$(dirname "$0")/../.."
MANIFEST=manifests/synthetic-default.toml
if [[ $# -gt 0 && $1 != -* ]]; then
    MANIFEST=$1
    shift
fi
BIN=${BIN:-target/debug/rmdistill}
SEEDS=${SEEDS:-[0, 1, 2]}
[ -x "$BIN" ] || { echo "no engine binary at $BIN (cargo build --bins first, or set BIN)" >&2; exit 1; }
store=()
[ -n "${STORE:-}" ] && store=(--store "$STORE")
sets=(-S "rhos=[0.2, 0.5, 0.8]" -S "seeds=$SEEDS" "$@")

"$BIN" run "$MANIFEST" rm "${sets[@]}" "${store[@]}" -q
seeds=$(python3 -c 'import sys, json; print(" ".join(str(s) for s in json.loads(sys.argv[1])))' "$SEEDS")
rows=$(mktemp)
trap 'rm -f "$rows"' EXIT
for s in $seeds; do
    for r in 0.2 0.5 0.8; do
        "$BIN" show "$MANIFEST" "rm@rho=$r,seed=$s.metrics" "${sets[@]}" "${store[@]}" --json --rows 0 |
            python3 -c 'import sys, json; m = json.load(sys.stdin)["metadata"]; print(json.dumps({"rho": sys.argv[1], "seed": sys.argv[2], **m}))' "$r" "$s" >> "$rows"
    done
done
python3 - "$rows" "$(lscpu | sed -n 's/^Model name: *//p' | head -1)" "$(git rev-parse --short HEAD)" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def f(r, k):
    v = r.get("rmdistill." + k)
    return None if v in (None, "null") else float(v)
def mean(v):
    v = [x for x in v if x is not None]
    return sum(v) / len(v) if v else None
def fmt(x):
    return "n/a" if x is None else f"{x:.3f}"
print(f"Reward models against the oracle (decided held-out pairs); CPU {sys.argv[2]}, commit {sys.argv[3]}\n")
print("| ρ | seed | accuracy | within the margin | length sensitivity | training pairs |")
print("| --- | --- | --- | --- | --- | --- |")
by = {}
for r in rows:
    by.setdefault(r["rho"], []).append(r)
    print(f"| {r['rho']} | {r['seed']} | {fmt(f(r, 'eval_accuracy'))} | {fmt(f(r, 'eval_accuracy_within_margin'))} "
          f"| {fmt(f(r, 'eval_length_sensitivity'))} | {r.get('rmdistill.train_pairs', 'n/a')} |")
m = {rho: {k: mean([f(r, k) for r in rs]) for k in ("eval_accuracy", "eval_accuracy_within_margin", "eval_length_sensitivity")}
     for rho, rs in by.items()}
for rho in ("0.2", "0.5", "0.8"):
    x = m[rho]
    print(f"| {rho} | mean | {fmt(x['eval_accuracy'])} | {fmt(x['eval_accuracy_within_margin'])} | {fmt(x['eval_length_sensitivity'])} | |")
acc, within = m["0.5"]["eval_accuracy"], m["0.5"]["eval_accuracy_within_margin"]
s2, s8 = m["0.2"]["eval_length_sensitivity"], m["0.8"]["eval_length_sensitivity"]
diff = None if s2 is None or s8 is None else s8 - s2
def met(x, t):
    return "n/a" if x is None else ("met" if x >= t else "**not met**")
print("\n| target (means over seeds) | measured | |")
print("| --- | --- | --- |")
print(f"| D_0.5 accuracy ≥ 0.75 | {fmt(acc)} | {met(acc, 0.75)} |")
print(f"| D_0.5 accuracy within the margin ≥ 0.65 | {fmt(within)} | {met(within, 0.65)} |")
print(f"| length sensitivity D_0.8 − D_0.2 ≥ 0.2 | {fmt(diff)} | {met(diff, 0.2)} |")
EOF
