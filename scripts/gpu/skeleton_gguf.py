"""A GGUF with SmolLM2's metadata (tokenizer, chat template, architecture) and zero-filled weights, plus the layout
that fill_random_gguf.py needs to give it random weights where it runs.

Why: SmolLM2-135M-Instruct's GGUF (98 MB) does not fit the 64 MiB that travels to the GPU machine, and nothing can be
downloaded there. Zero-filled weights compress to a few kilobytes; fill_random_gguf.py then writes a random
initialisation of the exact architecture (the same FLOPs per token as the real model, not its weights).

usage: skeleton_gguf.py SRC.gguf OUT.gguf OUT.layout.json [--tiny]
  --tiny: SmolLM2's tokenizer with a 2-layer, 64-wide Llama (GQA 4:2), for the CPU mode of scripts/gpu/check.sh.
"""

import json
import sys

import gguf
import numpy as np

CONFIG = ["block_count", "embedding_length", "feed_forward_length", "attention.head_count", "attention.head_count_kv",
          "rope.dimension_count"]
TINY = {"block_count": 2, "embedding_length": 64, "feed_forward_length": 128, "attention.head_count": 4,
        "attention.head_count_kv": 2, "rope.dimension_count": 16}


def main(src, out, layout, tiny):
    r = gguf.GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    assert arch == "llama", f"{src}: architecture {arch!r}, expected llama"
    cfg = {k: int(r.fields[f"llama.{k}"].contents()) for k in CONFIG}
    if tiny:
        cfg.update(TINY)
    vocab = len(r.fields["tokenizer.ggml.tokens"].contents())
    w = gguf.GGUFWriter(out, arch)
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type"):
            continue
        key = name[len("llama."):] if name.startswith("llama.") else None
        val = cfg[key] if key in cfg else f.contents()
        if name == "general.name":
            val = f"{val} (random initialisation)" if not tiny else "tiny Llama with SmolLM2's tokenizer"
        sub = f.types[1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, val, f.types[0], sub)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    h, ff, nh, nkv = (cfg[k] for k in ["embedding_length", "feed_forward_length", "attention.head_count",
                                        "attention.head_count_kv"])
    kv = h // nh * nkv
    # numpy shapes (rows, columns) = GGUF's (ne1, ne0): a weight mapping d_in → d_out is (d_out, d_in).
    tensors = [("token_embd.weight", (vocab, h))]
    for i in range(cfg["block_count"]):
        tensors += [(f"blk.{i}.{n}", s) for n, s in [
            ("attn_norm.weight", (h,)), ("attn_q.weight", (h, h)), ("attn_k.weight", (kv, h)),
            ("attn_v.weight", (kv, h)), ("attn_output.weight", (h, h)), ("ffn_norm.weight", (h,)),
            ("ffn_gate.weight", (ff, h)), ("ffn_up.weight", (ff, h)), ("ffn_down.weight", (h, ff))]]
    tensors.append(("output_norm.weight", (h,)))
    for name, shape in tensors:
        # norms in float32 (as llama.cpp writes them), matrices in float16
        w.add_tensor_info(name, shape, np.dtype(np.float32 if len(shape) == 1 else np.float16),
                          int(np.prod(shape)) * (4 if len(shape) == 1 else 2))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, shape in tensors:
        w.write_tensor_data(np.zeros(shape, np.float32 if len(shape) == 1 else np.float16))
    w.close()
    back = gguf.GGUFReader(out)
    lay = [{"name": t.name, "offset": int(t.data_offset), "count": int(t.n_elements), "dtype": t.tensor_type.name}
           for t in back.tensors]
    n = sum(t["count"] for t in lay)
    emb = vocab * h
    with open(layout, "w") as fh:
        json.dump({"config": cfg, "vocab": vocab, "params": n, "non_embedding_params": n - emb, "tensors": lay}, fh)
    print(f"{out}: {len(lay)} tensors, {n:,} parameters ({n - emb:,} non-embedding), config {cfg}")


if __name__ == "__main__":
    a = [x for x in sys.argv[1:] if x != "--tiny"]
    if len(a) != 3:
        sys.exit(__doc__)
    main(*a, tiny="--tiny" in sys.argv)
