#!/usr/bin/env python3
"""transformers' side of ml/examples/bench_logprobs.rs: same inputs, same computation (sum of response-token
log-probs from one forward pass, the way TRL computes them), same thread count.

usage: bench_logprobs_hf.py CHECKPOINT_DIR BATCH PROMPT_LEN RESPONSE_LEN ITERS THREADS
"""
import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM

d, b, p, r, iters, threads = sys.argv[1], *map(int, sys.argv[2:])
torch.set_num_threads(threads)
model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
v = model.config.vocab_size
ids = torch.tensor([[((i * 131 + j * 17) % (v - 3)) + 3 for j in range(p)] + [((i * 71 + j * 29) % (v - 3)) + 3 for j in range(r)]
                    for i in range(b)])
mask = torch.ones_like(ids)
loss_mask = torch.zeros_like(ids)
loss_mask[:, p:] = 1


def run():
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        lp = torch.gather(logits.log_softmax(-1), 2, ids[:, 1:, None]).squeeze(2)
        return (lp * loss_mask[:, 1:]).sum(-1)


first = run()
t = time.perf_counter()
for _ in range(iters):
    run()
s = (time.perf_counter() - t) / iters
print(json.dumps({"impl": "transformers", "seqs_per_s": round(b / s, 2), "tokens_per_s": round(b * (p + r) / s),
                  "sec_per_batch": round(s, 4), "first_logprob": round(first[0].item(), 5)}))
