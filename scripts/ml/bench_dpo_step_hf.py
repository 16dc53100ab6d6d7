#!/usr/bin/env python3
"""transformers + PyTorch side of ml/examples/bench_dpo_step.rs: the same DPO step written by hand the way TRL's
DPOTrainer computes it (concatenated chosen/rejected forward, logits -> log_softmax -> gather, sigmoid loss against
precomputed reference log-probs, clip 1.0, AdamW). A lower bound on TRL's own step time (no trainer overhead).

usage: bench_dpo_step_hf.py CHECKPOINT_DIR PAIRS PROMPT_LEN RESPONSE_LEN ITERS THREADS
"""
import json
import sys
import time

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

d, b, p, r, iters, threads = sys.argv[1], *map(int, sys.argv[2:])
torch.set_num_threads(threads)
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
model.eval()  # no dropout, as TRL's disable_dropout
v = model.config.vocab_size
tok = lambda i, j, k: ((i * k + j * 17) % (v - 3)) + 3
ids = torch.tensor([[tok(i % b, j, 131) for j in range(p)] + [tok(i, j, 71) for j in range(r)] for i in range(2 * b)])
mask = torch.ones_like(ids)
loss_mask = torch.zeros_like(ids)
loss_mask[:, p:] = 1


def logps():
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    lp = torch.gather(logits.log_softmax(-1), 2, ids[:, 1:, None]).squeeze(2)
    return (lp * loss_mask[:, 1:]).sum(-1)


with torch.no_grad():
    ref = logps()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)


def step():
    lr = logps() - ref
    loss = -F.logsigmoid(0.1 * (lr[:b] - lr[b:])).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad()
    return loss.item()


step()
t = time.perf_counter()
for _ in range(iters):
    last = step()
s = (time.perf_counter() - t) / iters
print(json.dumps({"impl": "transformers+torch", "pairs_per_s": round(b / s, 2), "sec_per_step": round(s, 4), "last_loss": round(last, 5)}))
