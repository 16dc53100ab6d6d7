#!/usr/bin/env python3
"""Summarises scripts/bench/ml.sh's raw results: per workload and side the median throughput (wall and CPU time,
min–max over rounds), and rmdistill's ratio to each peer with the issue-11 target where there is one.

usage: ml_summary.py RESULTS.jsonl [FIRST_LINE]   (lines before FIRST_LINE belong to earlier runs)
"""
import json
import statistics
import sys
from collections import defaultdict

path = sys.argv[1]
first = int(sys.argv[2]) if len(sys.argv) > 2 else 0
lines = open(path).read().splitlines()[first:]
header = [l for l in open(path).read().splitlines()[:first + 1] if l.startswith("#")]
rows = [json.loads(l) for l in lines if l.startswith("{")]

# throughput (higher is better) and CPU seconds per unit of work, per result kind
def measures(r):
    res = r["result"]
    if "pairs_per_s" in res:
        return (res["pairs_per_s"], "pairs/s", res.get("cpu_sec_per_step"), res.get("min_cpu_sec_per_step"),
                res["pairs_per_s"] * res["sec_per_step"])
    if "seqs_per_s" in res:
        return (res["seqs_per_s"], "seq/s", res.get("cpu_sec_per_batch"), res.get("min_cpu_sec_per_batch"),
                res["seqs_per_s"] * res["sec_per_batch"])
    return None


wall = defaultdict(list)
cpu = defaultdict(list)
best = defaultdict(list)
loads = defaultdict(list)
units = {}
batched = defaultdict(list)
for r in rows:
    w, side = r["workload"].split("/")
    loads[w].append(r["load1"])
    if w.startswith("batched"):
        batched[w].append(r["result"])
        continue
    m = measures(r)
    if m is None:
        continue
    thr, unit, cpu_s, min_cpu_s, per = m
    wall[(w, side)].append(thr)
    if cpu_s:
        cpu[(w, side)].append(per / cpu_s)  # work units per CPU second
    if min_cpu_s:
        best[(w, side)].append(per / min_cpu_s)  # the same, from the fastest step of the run
    units[w] = unit

targets = {
    ("dpo-step", "trl"): 3.0, ("dpo-step", "torch-loop"): 1.5, ("d-dpo-step", "trl"): 3.0,
    ("d-dpo-step", "torch-loop"): 1.5,
}
for w in ["logprobs-tiny-pairs", "logprobs-smollm2-pairs", "logprobs-tiny-distinct", "logprobs-smollm2-distinct"]:
    targets[(w, "transformers")] = 2.0


def med(v):
    return statistics.median(v) if v else float("nan")


def fmt(v):
    return f"{med(v):.2f} ({min(v):.2f}–{max(v):.2f})" if v else "—"


print()
for h in header[-1:]:
    print(h.lstrip("# "))
print()
print("| workload | side | wall: median (min–max) | per CPU second: median | per CPU second, fastest step: median | rounds | load (1 min) |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for (w, side) in sorted(wall):
    print(f"| {w} | {side} | {fmt(wall[(w, side)])} {units[w]} | {med(cpu[(w, side)]):.2f} | {med(best[(w, side)]):.2f} | "
          f"{len(wall[(w, side)])} | {min(loads[w]):.1f}–{max(loads[w]):.1f} |")


def ratio(d, a, b):
    return med(d[a]) / med(d[b]) if d[a] and d[b] else float("nan")


print()
print("Ratios are rmdistill's throughput over the peer's: from wall-time medians (the figure the targets mean, valid on a"
      " quiet machine), from CPU-time medians, and from the fastest step's CPU time (the least disturbed by other load).")
print()
print("| workload | rmdistill vs | wall | CPU time | fastest step | target (on wall time) |")
print("| --- | --- | --- | --- | --- | --- |")
pairs = [((w, "rmdistill"), (w, side), w, side) for (w, side) in sorted(wall) if side != "rmdistill" and (w, "rmdistill") in wall]
# the d-DPO step has no TRL counterpart: compare it with TRL's DPO step (same model, shapes and optimizer)
if ("d-dpo-step", "rmdistill") in wall and ("dpo-step", "trl") in wall:
    pairs.append((("d-dpo-step", "rmdistill"), ("dpo-step", "trl"), "d-dpo-step", "trl (its DPO step; TRL has no d-DPO)"))
for a, b, w, side in pairs:
    rw = ratio(wall, a, b)
    t = targets.get((w, side.split(" ")[0]))
    verdict = f"≥ {t}×: " + ("met" if rw >= t else "not met") if t else "—"
    print(f"| {w} | {side} | {rw:.2f}× | {ratio(cpu, a, b):.2f}× | {ratio(best, a, b):.2f}× | {verdict} |")
if batched:
    print()
    print("| workload | K | one by one (policy steps/s) | batched (policy steps/s) | speedup wall (median) | speedup CPU time |")
    print("| --- | --- | --- | --- | --- | --- |")
    for w, rs in sorted(batched.items()):
        print(f"| {w} (d {rs[0]['d_model']}, {rs[0]['n_layer']} layers, {rs[0]['params_per_model']} params) | {rs[0]['k']} | "
              f"{med([r['one_by_one_policy_steps_per_s'] for r in rs]):.1f} | {med([r['batched_policy_steps_per_s'] for r in rs]):.1f} | "
              f"{med([r['speedup'] for r in rs]):.2f}× | {med([r['cpu_speedup'] for r in rs]):.2f}× |")
