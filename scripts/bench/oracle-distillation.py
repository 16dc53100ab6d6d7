#!/usr/bin/env python3
"""d-DPO from the oracle's reward against DPO, IPO and d-DPO from the learned reward model, paired over seeds.

Reads every test evaluation's advantage from the store of `manifests/synthetic-oracle-distillation.toml` (`rmdistill
show … .summary --json`) and prints, per ρ, the mean advantage of d-DPO from r* with its 95% t interval, and the
paired contrasts d-DPO(r*) − DPO, − IPO and − d-DPO (the same prompts and π_ref samples per seed) with Student's t on
seeds − 1 df and Holm's correction over all of them (BENCHMARKS.md, "d-DPO from the oracle's reward").

    python3 scripts/bench/oracle-distillation.py [MANIFEST] [SEEDS]

The report of the manifest's `report_oracle` node states the same contrasts (its section "Further contrasts fixed in
advance", computed by the tool's own statistics); this script recomputes them with scipy and statsmodels.

Needs scipy and statsmodels (`pip install scipy statsmodels`) and a store where MANIFEST has run; run from the
repository root (the binary: $RMDISTILL, default target/debug/rmdistill).
"""
import json
import sys

from store_stats import holm, metadata, paired

MANIFEST = sys.argv[1] if len(sys.argv) > 1 else "manifests/synthetic-oracle-distillation.toml"
SEEDS = range(int(sys.argv[2]) if len(sys.argv) > 2 else 10)
RHOS = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
ORACLE = "d_dpo_oracle"
OTHERS = [("dpo", "DPO"), ("ipo", "IPO"), ("d_dpo", "d-DPO")]


def summary(stage: str, rho: float, seed: int) -> dict:
    coords = f"method=d-dpo-oracle,rho={rho},seed={seed}" if stage == ORACLE else f"rho={rho},seed={seed}"
    return metadata(MANIFEST, f"eval_{stage}@{coords}.summary")


stages = [ORACLE] + [s for s, _ in OTHERS]
meta = {(s, r, k): summary(s, r, k) for s in stages for r in RHOS for k in SEEDS}
adv = {key: float(m["rmdistill.advantage"]) for key, m in meta.items()}
rows = []
for r in RHOS:
    for s, name in OTHERS:
        d = [adv[(ORACLE, r, k)] - adv[(s, r, k)] for k in SEEDS]
        rows.append((r, name, *paired(d)))
adj = holm([row[4] for row in rows])
print(f"{len(list(SEEDS))} seeds; Holm over the {len(rows)} contrasts")
print("| ρ | d-DPO(r*) advantage | KL | " + " | ".join(f"d-DPO(r*) − {n}" for _, n in OTHERS) + " |")
print("|---" * (3 + len(OTHERS)) + "|")
for i, r in enumerate(RHOS):
    mean, half, _ = paired([adv[(ORACLE, r, k)] for k in SEEDS])
    kl = sum(float(meta[(ORACLE, r, k)]["rmdistill.kl"]) for k in SEEDS) / len(list(SEEDS))
    cells = []
    for j in range(len(OTHERS)):
        _, _, m, h, _ = rows[i * len(OTHERS) + j]
        cells.append(f"{m:+.3f} [{m - h:+.3f}, {m + h:+.3f}], p̃ {adj[i * len(OTHERS) + j]:.2g}")
    print(f"| {r} | {mean:+.3f} ± {half:.3f} | {kl:.2f} | " + " | ".join(cells) + " |")
print("β chosen by validation, per ρ:", [json.loads(meta[(ORACLE, r, 0)]["rmdistill.policy_info"])["beta"] for r in RHOS])
