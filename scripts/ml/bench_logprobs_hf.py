#!/usr/bin/env python3
"""transformers' side of ml/examples/bench_logprobs.rs: same checkpoint, token ids (LAYOUT `pairs`: row i and row
i + BATCH/2 share prompt i; `distinct`: every row its own prompt), same computation (the sum of response-token
log-probs of every row from one forward pass, logits -> log_softmax -> gather, the way TRL computes them), same
thread count, under `torch.inference_mode()`.

HEAD `full` (TRL's way: logits at every position) or `keep` (`logits_to_keep`: the LM head only on the last
RESPONSE_LEN + 1 positions, which is exact here since every row has the same length).

usage: bench_logprobs_hf.py CHECKPOINT_DIR BATCH PROMPT_LEN RESPONSE_LEN ITERS THREADS [LAYOUT] [HEAD]
"""
import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM

d, b, p, r, iters, threads = sys.argv[1], *map(int, sys.argv[2:7])
layout = sys.argv[7] if len(sys.argv) > 7 else "pairs"
head = sys.argv[8] if len(sys.argv) > 8 else "full"
assert layout in ("pairs", "distinct") and head in ("full", "keep")
torch.set_num_threads(threads)
model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
v = model.config.vocab_size
prompt_of = (lambda i: i % (b // 2)) if layout == "pairs" else (lambda i: i)
ids = torch.tensor([[((prompt_of(i) * 131 + j * 17) % (v - 3)) + 3 for j in range(p)]
                    + [((i * 71 + j * 29) % (v - 3)) + 3 for j in range(r)] for i in range(b)])
mask = torch.ones_like(ids)
loss_mask = torch.zeros_like(ids)
loss_mask[:, p:] = 1
targets = ids[:, p:]


def run():
    with torch.inference_mode():
        if head == "full":  # every position, masked to the response tokens afterwards
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            lp = torch.gather(logits.log_softmax(-1), 2, ids[:, 1:, None]).squeeze(2)
            return (lp * loss_mask[:, 1:]).sum(-1)
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=r + 1).logits[:, :-1].float()
        return torch.gather(logits.log_softmax(-1), 2, targets[:, :, None]).squeeze(2).sum(-1)


first = run()
t, c = time.perf_counter(), time.process_time()
fastest = float("inf")
for _ in range(iters):
    c0 = time.process_time()
    run()
    fastest = min(fastest, time.process_time() - c0)
s = (time.perf_counter() - t) / iters
cpu = (time.process_time() - c) / iters
print(json.dumps({"impl": "transformers", "layout": layout, "head": head, "seqs_per_s": round(b / s, 2),
                  "tokens_per_s": round(b * (p + r) / s), "sec_per_batch": round(s, 4),
                  "cpu_sec_per_batch": round(cpu, 4), "min_cpu_sec_per_batch": round(fastest, 4), "first_logprob": round(first[0].item(), 5)}))
