#!/usr/bin/env python3
"""Creates the tiny parity fixtures under ml/tests/fixtures/ with Hugging Face transformers.

For each architecture (GPT-2, Llama with GQA and tied embeddings like SmolLM2) it writes a causal LM and a
sequence-classification (reward) model with random, deliberately large weights (so that logits are O(1) and a wrong
op shows), then the expected outputs computed in float64 from the same fp32 weights:
  <name>/config.json, <name>/model.safetensors      the checkpoint, as save_pretrained writes it
  <name>/expected.safetensors                         input_ids, attention_mask (right padding), logits or rewards
  <name>/expected.json                                sequence log-probs (sum and mean) of responses given prompts

GGUF fixtures (for the importer), written with the `gguf` package the way llama.cpp's converter writes them:
  quant-types.gguf + quant-types.expected.safetensors   one tensor per type (F32, F16, Q4_0, Q4_1, Q8_0) and its
                                                        dequantisation by gguf-py
  llama-tiny.gguf                                       llama-tiny in F32 with Q/K rows permuted as
                                                        convert_hf_to_gguf.py does (its expected logits apply)

Run: .venv/bin/python scripts/ml/make_fixtures.py  (seeded; reruns give the same files up to safetensors metadata)
"""
import json
import pathlib

import torch
from safetensors.torch import save_file
from transformers import (GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM, LlamaForSequenceClassification)

OUT = pathlib.Path(__file__).resolve().parents[2] / "ml" / "tests" / "fixtures"
VOCAB = 96
PAD = 0  # real tokens are drawn from 1..VOCAB-1 so that transformers' pad-based last-token lookup agrees


def gpt2_config():
    return GPT2Config(vocab_size=VOCAB, n_positions=48, n_embd=32, n_layer=2, n_head=4, bos_token_id=1,
                      eos_token_id=2, pad_token_id=PAD)


def llama_config():
    return LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, rope_theta=50000.0, rms_norm_eps=1e-5,
                       max_position_embeddings=64, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                       pad_token_id=PAD)


def randomise(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen) if name.endswith("weight")
                        else 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))


def inputs(gen):
    ids = torch.randint(1, VOCAB, (3, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # right padding
    mask[2, 5:] = 0
    ids = ids.masked_fill(mask == 0, PAD)
    return ids, mask


def pairs(gen):
    out = []
    for plen, rlen in [(1, 1), (3, 5), (6, 2), (2, 7), (5, 4)]:
        out.append({"prompt": torch.randint(1, VOCAB, (plen,), generator=gen).tolist(),
                    "response": torch.randint(1, VOCAB, (rlen,), generator=gen).tolist()})
    return out


def seq_logprobs(model, ps):
    """Ground truth, one unpadded sequence at a time: sum and mean of log p(response token | everything before)."""
    for p in ps:
        ids = torch.tensor([p["prompt"] + p["response"]])
        logp = torch.log_softmax(model(ids).logits[0], -1)
        n = len(p["prompt"])
        tok = [logp[n - 1 + i, t].item() for i, t in enumerate(p["response"])]
        p["sum"] = sum(tok)
        p["mean"] = sum(tok) / len(tok)
    return ps


def make(name, cls, cfg, seed, head):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    randomise(model, gen)
    d = OUT / name
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(d)
    ref = model.to(torch.float64)  # same fp32 values, exact-ish arithmetic: the tolerance then measures rmdistill only
    ids, mask = inputs(gen)
    with torch.no_grad():
        out = ref(input_ids=ids, attention_mask=mask).logits
        tensors = {"input_ids": ids, "attention_mask": mask}
        if head == "lm":
            tensors["logits"] = out.contiguous()
            extra = {"pairs": seq_logprobs(ref, pairs(gen))}
        else:
            tensors["rewards"] = out[:, 0].contiguous()
            extra = {}
    save_file(tensors, d / "expected.safetensors")
    (d / "expected.json").write_text(json.dumps(extra, indent=1) + "\n")
    print(name, sum(p.numel() for p in model.parameters()), "params;", "max |out|", out.abs().max().item())


def permute(w, n_head, n_head_kv):
    """convert_hf_to_gguf.py's LlamaModel.permute (HF half-split rotary rows -> interleaved)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def make_gguf_fixtures():
    import gguf
    import numpy as np
    from safetensors.torch import load_file
    rng = np.random.default_rng(5)
    path = OUT / "quant-types.gguf"
    w = gguf.GGUFWriter(str(path), arch="llama")
    Q = gguf.GGMLQuantizationType
    for name, qt in [("f32", Q.F32), ("f16", Q.F16), ("q4_0", Q.Q4_0), ("q4_1", Q.Q4_1), ("q8_0", Q.Q8_0)]:
        x = (rng.standard_normal((48, 64)) * rng.uniform(0.01, 3.0, (48, 1))).astype(np.float32)
        if qt == Q.F32:
            w.add_tensor(name, x)
        elif qt == Q.F16:
            w.add_tensor(name, x.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(x, qt), raw_dtype=qt)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    r = gguf.GGUFReader(str(path))
    exp = {t.name: torch.from_numpy(np.ascontiguousarray(
        gguf.quants.dequantize(t.data, t.tensor_type).reshape(48, 64).astype(np.float32))) for t in r.tensors}
    save_file(exp, OUT / "quant-types.expected.safetensors")

    cfg = llama_config()
    sd = load_file(OUT / "llama-tiny" / "model.safetensors")
    w = gguf.GGUFWriter(str(OUT / "llama-tiny.gguf"), arch="llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(50000.0)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    names = {"embed_tokens": "token_embd", "norm": "output_norm", "input_layernorm": "attn_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
             "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for k, v in sd.items():
        x = v.numpy()
        if "q_proj" in k:
            x = permute(x, cfg.num_attention_heads, cfg.num_attention_heads)
        elif "k_proj" in k:
            x = permute(x, cfg.num_attention_heads, cfg.num_key_value_heads)
        parts = k.removesuffix(".weight").split(".")
        if parts[1] == "layers":
            name = f"blk.{parts[2]}.{names['.'.join(parts[3:])]}.weight"
        else:
            name = names[parts[1]] + ".weight"
        w.add_tensor(name, np.ascontiguousarray(x))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()


if __name__ == "__main__":
    torch.set_default_dtype(torch.float32)
    for n, cls, cfg, seed, head in [
        ("gpt2-tiny", GPT2LMHeadModel, gpt2_config(), 1, "lm"),
        ("llama-tiny", LlamaForCausalLM, llama_config(), 2, "lm"),
        ("gpt2-tiny-rm", GPT2ForSequenceClassification, gpt2_config(), 3, "rm"),
        ("llama-tiny-rm", LlamaForSequenceClassification, llama_config(), 4, "rm"),
    ]:
        if head == "rm":
            cfg.num_labels = 1  # one scalar: a reward model
        cfg._attn_implementation = "eager"
        make(n, cls, cfg, seed, head)
    make_gguf_fixtures()
