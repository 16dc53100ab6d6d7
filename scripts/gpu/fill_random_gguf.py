"""Gives the zero-filled GGUF written by skeleton_gguf.py a random initialisation, in place: matrices and embeddings
~ N(0, 0.02²) (transformers' initializer_range for Llama/SmolLM2), norm weights 1. Needs only numpy.

usage: fill_random_gguf.py FILE.gguf FILE.layout.json [SEED]
"""

import json
import sys

import numpy as np


def main(path, layout, seed=0):
    lay = json.load(open(layout))
    rng = np.random.default_rng(int(seed))
    mm = np.memmap(path, mode="r+", dtype=np.uint8)
    for t in lay["tensors"]:
        dt = {"F32": np.float32, "F16": np.float16}[t["dtype"]]
        view = mm[t["offset"]: t["offset"] + t["count"] * np.dtype(dt).itemsize].view(dt)
        if "norm" in t["name"]:
            view[:] = 1
        else:
            view[:] = (rng.standard_normal(t["count"], dtype=np.float32) * 0.02).astype(dt)
    mm.flush()
    print(f"{path}: {lay['params']:,} parameters set at random (seed {seed})")


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    main(*sys.argv[1:])
