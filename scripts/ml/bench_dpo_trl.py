#!/usr/bin/env python3
"""TRL's DPOTrainer side of ml/examples/bench_dpo_step.rs: the same tiny GPT-2 checkpoint, the same pairs per step,
prompt/response token lengths, beta, optimizer settings (AdamW lr 1e-4, betas 0.9/0.999, eps 1e-8, no weight decay,
constant schedule, clip 1.0) and thread count, run through `trl.DPOTrainer.train()` itself (sigmoid loss).

The Rust bench computes the reference log-probs once, before timing, so TRL runs with
`precompute_ref_log_probs=True` (done in `DPOTrainer.__init__`, not timed) and only training steps are timed.

Token ids: the same formulas as the Rust bench. TRL tokenizes text and always ends each response with EOS, so a
word-level tokenizer maps "t<id>" to <id> and the response is the Rust bench's first R-1 tokens + EOS: every row has
exactly PROMPT_LEN + RESPONSE_LEN tokens, as in the Rust bench; no padding, no truncation.

Timing: a callback records the wall clock at the end of every optimizer step; the first step is warm-up, the
reported time is from the end of step 1 to the end of step ITERS+1 (so it includes TRL's data loading and collation
between steps, its per-step metric bookkeeping and the Trainer's step loop, with logging/saving/eval off).
The dataset holds the same PAIRS pairs repeated ITERS+1 times and is read sequentially, so every step sees the
batch the Rust bench uses (one epoch, no re-shuffling).

usage: bench_dpo_trl.py CHECKPOINT_DIR PAIRS PROMPT_LEN RESPONSE_LEN ITERS THREADS
"""
import json
import sys
import tempfile
import time

import torch

d, b, p, r, iters, threads = sys.argv[1], *map(int, sys.argv[2:])
torch.set_num_threads(threads)
torch.manual_seed(0)

import datasets  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from tokenizers.models import WordLevel  # noqa: E402
from tokenizers.pre_tokenizers import WhitespaceSplit  # noqa: E402
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

datasets.disable_progress_bars()
transformers.logging.set_verbosity_error()

model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
v = model.config.vocab_size

# Word-level tokenizer: "t<i>" -> i for i >= 3; 0 = pad, 1 = unk, 2 = eos (the Rust bench's ids are all >= 3).
vocab = {"<pad>": 0, "<unk>": 1, "<eos>": 2, **{f"t{i}": i for i in range(3, v)}}
tk = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
tk.pre_tokenizer = WhitespaceSplit()
tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")

f = lambda i, j, k: ((i * k + j * 17) % (v - 3)) + 3  # noqa: E731  same as the Rust bench's `tok`
words = lambda ids: " ".join(f"t{x}" for x in ids)  # noqa: E731
pairs = [
    {
        "prompt": words(f(i, j, 131) for j in range(p)),
        "chosen": " " + words(f(i, j, 71) for j in range(r - 1)) + "<eos>",
        "rejected": " " + words(f(b + i, j, 71) for j in range(r - 1)) + "<eos>",
    }
    for i in range(b)
]
ds = datasets.Dataset.from_list(pairs * (iters + 1))

out = tempfile.mkdtemp(prefix="bench_dpo_trl_")
args = DPOConfig(
    output_dir=out,
    use_cpu=True,
    bf16=False,
    gradient_checkpointing=False,
    per_device_train_batch_size=b,
    gradient_accumulation_steps=1,
    max_steps=iters + 1,
    learning_rate=1e-4,
    lr_scheduler_type="constant",
    warmup_steps=0,
    weight_decay=0.0,
    adam_beta1=0.9,
    adam_beta2=0.999,
    adam_epsilon=1e-8,
    max_grad_norm=1.0,
    beta=0.1,
    loss_type=["sigmoid"],
    max_length=p + r,
    precompute_ref_log_probs=True,
    precompute_ref_batch_size=b,
    disable_dropout=True,
    train_sampling_strategy="sequential",
    dataloader_num_workers=0,
    logging_strategy="no",
    save_strategy="no",
    eval_strategy="no",
    report_to=[],
    disable_tqdm=True,
    seed=0,
)


class StepTimes(TrainerCallback):
    def __init__(self):
        self.t = []
        self.c = []

    def on_step_end(self, args, state, control, **kw):
        self.t.append(time.perf_counter())
        self.c.append(time.process_time())


times = StepTimes()
trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[times])

# Check the shapes the trainer will see: 2*b rows of exactly p + r tokens, completion mask on the last r.
batch = trainer.data_collator([trainer.train_dataset[i] for i in range(b)])
assert tuple(batch["input_ids"].shape) == (2 * b, p + r), batch["input_ids"].shape
assert int(batch["completion_mask"].sum()) == 2 * b * r and int(batch["attention_mask"].sum()) == 2 * b * (p + r)
assert torch.get_num_threads() == threads

losses = []
step_threads = set()
_orig = trainer.compute_loss


def compute_loss(*a, **k):
    loss = _orig(*a, **k)
    losses.append(loss[0] if isinstance(loss, tuple) else loss)
    step_threads.add(torch.get_num_threads())
    return loss


trainer.compute_loss = compute_loss
t0 = time.perf_counter()
trainer.train()
total = time.perf_counter() - t0
assert len(times.t) == iters + 1, len(times.t)
s = (times.t[-1] - times.t[0]) / iters
cpu = (times.c[-1] - times.c[0]) / iters
fastest = min(b - a for a, b in zip(times.c, times.c[1:]))
print(json.dumps({"impl": "trl.DPOTrainer", "pairs_per_s": round(b / s, 2), "sec_per_step": round(s, 4),
                  "cpu_sec_per_step": round(cpu, 4), "min_cpu_sec_per_step": round(fastest, 4),
                  "last_loss": round(losses[-1].item(), 5), "train_call_s": round(total, 3), "optim": str(args.optim),
                  "threads": sorted(step_threads), "trl": trl.__version__, "transformers": transformers.__version__,
                  "torch": torch.__version__}))
