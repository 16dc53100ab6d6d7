#!/usr/bin/env python3
"""Does the selection seed carry finding 1? A check of the report's contrasts without it (BENCHMARKS.md, "Ten seeds").

On the seeds in `select_seeds` (seed 0 in the default pipeline) each method's final policy is the candidate that
validation chose, so its test advantage may carry a winner's-curse bias that the other seeds do not. This reads every
test evaluation's advantage from the store (`rmdistill show … .summary --json`), and for finding 1 (d-DPO, dp-DPO and
e-DPO against DPO and IPO at ρ ≤ 0.5) prints the paired t-tests over all seeds and over the seeds without the
selection seed, each with Holm's correction over the finding's 24 contrasts, as the report's p̃_f is computed.

    python3 scripts/bench/selection-seed.py [MANIFEST] [SEEDS]   # default: manifests/synthetic-10-seeds.toml 10

Needs scipy and statsmodels (`pip install scipy statsmodels`) and a store where MANIFEST has run; run from the
repository root (the binary: $RMDISTILL, default target/debug/rmdistill).
"""
import sys

from store_stats import holm, metadata, paired

MANIFEST = sys.argv[1] if len(sys.argv) > 1 else "manifests/synthetic-10-seeds.toml"
SEEDS = int(sys.argv[2]) if len(sys.argv) > 2 else 10
SELECT_SEED = 0
RHOS = [0.2, 0.3, 0.4, 0.5]
CONTRASTS = [("d_dpo", "dpo"), ("d_dpo", "ipo"), ("dp_dpo", "dpo"), ("dp_dpo", "ipo"), ("e_dpo", "dpo"), ("e_dpo", "ipo")]


def advantage(stage: str, rho: float, seed: int) -> float:
    return float(metadata(MANIFEST, f"{stage}@rho={rho},seed={seed}.summary")["rmdistill.advantage"])


methods = sorted({m for pair in CONTRASTS for m in pair})
adv = {(m, r, s): advantage(f"eval_{m}", r, s) for m in methods for r in RHOS for s in range(SEEDS)}
for label, seeds in [("all seeds", list(range(SEEDS))), (f"without seed {SELECT_SEED}", [s for s in range(SEEDS) if s != SELECT_SEED])]:
    rows = []
    for r in RHOS:
        for a, b in CONTRASTS:
            d = [adv[(a, r, s)] - adv[(b, r, s)] for s in seeds]
            mean, _, p = paired(d)
            rows.append((mean, p))
    adj = holm([p for _, p in rows])
    print(
        f"{label} ({len(seeds)}): differences {min(m for m, _ in rows):+.4f} to {max(m for m, _ in rows):+.4f}, "
        f"{sum(m < 0 for m, _ in rows)} of {len(rows)} negative, {sum(p < 0.05 for p in adj)} significant after Holm "
        f"over the {len(rows)} (largest adjusted p {max(adj):.4f})"
    )
