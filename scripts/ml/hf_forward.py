#!/usr/bin/env python3
"""Loads a checkpoint directory with transformers exactly as a user would, runs it on the given inputs and prints
JSON: {"logits": [...]} for a causal LM, {"rewards": [...]} for a sequence classifier. Fails if any weight is
missing, unexpected or freshly initialised, so a silent partial load cannot pass a parity test.

usage: hf_forward.py '{"input_ids": [[...]], "attention_mask": [[...]]}' CHECKPOINT_DIR...
Prints one JSON object mapping each directory to its outputs (one process: transformers imports slowly).
"""
import json
import sys

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification


def run(d, inp):
    cfg = AutoConfig.from_pretrained(d)
    is_rm = any(a.endswith("ForSequenceClassification") for a in (cfg.architectures or []))
    cls = AutoModelForSequenceClassification if is_rm else AutoModelForCausalLM
    model, info = cls.from_pretrained(d, output_loading_info=True, dtype=torch.float32)
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if bad:
        sys.exit(f"loading {d}: {bad}")
    model.eval()
    ids = torch.tensor(inp["input_ids"])
    mask = torch.tensor(inp["attention_mask"])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask).logits
    return {"rewards": out[:, 0].tolist()} if is_rm else {"logits": out.tolist()}


inp = json.loads(sys.argv[1])
print(json.dumps({d: run(d, inp) for d in sys.argv[2:]}))
