#!/usr/bin/env python3
"""A minimal, competent hand-written PyTorch loop: the baseline for ml/examples/bench_dpo_step.rs that a careful
engineer would write without a trainer library.

Same checkpoint, token ids, pairs per step, prompt/response lengths, β, optimizer settings (AdamW lr 1e-4,
betas 0.9/0.999, eps 1e-8, no weight decay, constant lr, global-norm clipping at 1.0) and thread count as the Rust
bench. The reference log-probs are precomputed once, before timing. What makes it competent:
  - one forward over the concatenated chosen + rejected rows (no padding, so no attention mask: SDPA's causal path);
  - the LM head only on the positions that predict response tokens (`logits_to_keep`), log-probs by
    `cross_entropy` (log-sum-exp, no full log-softmax tensor kept);
  - `torch.optim.AdamW(fused=True)` (one fused kernel per step) and `clip_grad_norm_(foreach=True)`;
  - `zero_grad(set_to_none=True)`, dropout off (`model.eval()`), no per-step Python work beyond the step itself.

LOSS is `dpo` (sigmoid DPO, -log σ(β·Δ)) or `distill` (d-DPO, METHOD.md eq. 7: ((r_1 − r_2) − β·Δ)², with fixed
per-pair reward differences standing in for the reward models' precomputed scores).

`--device=cuda` runs it on the GPU under bf16 autocast (torch.autocast, the LM head included), for scripts/gpu/check.sh.

usage: bench_dpo_torch.py CHECKPOINT_DIR PAIRS PROMPT_LEN RESPONSE_LEN ITERS THREADS [LOSS] [--device=cpu|cuda]
"""
import contextlib
import json
import sys
import time

import torch
import torch.nn.functional as F

device = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--device=")), "cpu")
argv = [a for a in sys.argv if not a.startswith("--")]
d, b, p, r, iters, threads = argv[1], *map(int, argv[2:7])
loss_kind = argv[7] if len(argv) > 7 else "dpo"
assert loss_kind in ("dpo", "distill"), loss_kind
torch.set_num_threads(threads)
torch.manual_seed(0)

from transformers import AutoModelForCausalLM  # noqa: E402

model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).to(device)
model.eval()  # dropout off, as TRL's disable_dropout; gradients still flow
v = model.config.vocab_size
tok = lambda i, j, k: ((i * k + j * 17) % (v - 3)) + 3  # noqa: E731  the Rust bench's formula
# rows 0..b: prompt i + chosen response; rows b..2b: prompt i + rejected response
ids = torch.tensor([[tok(i % b, j, 131) for j in range(p)] + [tok(i, j, 71) for j in range(r)] for i in range(2 * b)])
ids = ids.to(device)
targets = ids[:, p:].reshape(-1)
beta = 0.1
# d-DPO's target reward differences (the Rust bench uses the same formula)
reward_diff = torch.tensor([((i * 37) % 11 - 5) / 5.0 for i in range(b)], device=device)
autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device == "cuda" else contextlib.nullcontext


def logps():
    # logits of the last r + 1 positions; the last one predicts nothing and is dropped
    with autocast():
        logits = model(input_ids=ids, logits_to_keep=r + 1).logits[:, :-1]
    nll = F.cross_entropy(logits.reshape(-1, v).float(), targets, reduction="none")
    return -nll.view(2 * b, r).sum(-1)


with torch.no_grad():
    ref = logps()
params = [q for q in model.parameters() if q.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, fused=True)


def step():
    logr = logps() - ref
    delta = logr[:b] - logr[b:]
    if loss_kind == "dpo":
        loss = -F.logsigmoid(beta * delta).mean()
    else:
        loss = (reward_diff - beta * delta).pow(2).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


step()
if device == "cuda":
    step()  # a second warm-up, as the Rust bench does on CUDA
    torch.cuda.synchronize()
t, c = time.perf_counter(), time.process_time()
fastest = float("inf")
for _ in range(iters):
    c0 = time.process_time()
    last = step()
    fastest = min(fastest, time.process_time() - c0)
last = last.item()
s = (time.perf_counter() - t) / iters
cpu = (time.process_time() - c) / iters
print(json.dumps({"impl": "torch-loop", "loss": loss_kind, "pairs_per_s": round(b / s, 2), "sec_per_step": round(s, 4),
                  "cpu_sec_per_step": round(cpu, 4), "min_cpu_sec_per_step": round(fastest, 4),
                  "last_loss": round(last, 5), "threads": torch.get_num_threads(), "torch": torch.__version__,
                  "device": device, "positions_per_s": round(ids.numel() / s, 1)}))
